"""Which images drive an ROI most and least, averaged over the 8 NSD subjects?

Runs on the demo data by default (synthetic values in NED's formats)::

    python examples/top_images.py --out figures/
    python examples/top_images.py --location /data/nest --imageset things --roi PPA --k 10

Writes ``top_images.png``: every image's subject-averaged ROI mean in rank order with the
top and bottom ``k`` marked, and the scores of those images by name.
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import _example
import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

import nest_data

logger = logging.getLogger("examples.top_images")


def main(argv: list[str] | None = None) -> Path:
    """Rank the images, log the best and worst, and write the figure; return its path."""
    parser = _example.parser(__doc__)
    parser.add_argument("--imageset", default="things")
    parser.add_argument("--roi", default="FFA-1")
    parser.add_argument("--subjects", type=int, nargs="+", default=list(range(1, 9)))
    parser.add_argument("--k", type=int, default=5, help="images at each end")
    parser.add_argument("--min-ncsnr", type=float, default=0.5)
    args = _example.start(parser, argv)

    tree = nest_data.open_many(imageset=args.imageset, subject=args.subjects, roi=args.roi,
                               location=args.location)
    # One pass over the responses: each subject's mean over its reliable voxels, then the
    # average over subjects (their voxel counts differ).
    scores = nest_data.roi_means(tree, min_ncsnr=args.min_ncsnr).mean("subject")
    scores = scores.sel(roi=args.roi).compute()
    top = nest_data.top_images(scores, k=args.k)
    bottom = nest_data.top_images(scores, k=args.k, largest=False)

    label = next((c for c in ("concept", "label_name", "nsd_id") if c in scores.coords),
                 "image")

    def names(sel: xr.DataArray) -> list[str]:
        return [f"{int(i)} {v}" if label != "image" else str(int(i))
                for i, v in zip(sel["image"].values, sel[label].values, strict=True)]

    for title, sel in (("most", top), ("least", bottom)):
        logger.info("images that drive %s %s (mean of %d subjects):", args.roi, title,
                    len(args.subjects))
        for name, value in zip(names(sel), sel.values, strict=True):
            logger.info("  %-24s %+.3f", name, value)

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 4.2),
                                   gridspec_kw={"width_ratios": [1.2, 1]})
    order = np.argsort(-scores.values, kind="stable")
    ax0.plot(np.arange(1, order.size + 1), scores.values[order], ".", color="0.6",
             label="all images")
    ax0.plot(np.arange(1, args.k + 1), top.values, "o", color="#228833", label=f"top {args.k}")
    ax0.plot(np.arange(order.size - args.k + 1, order.size + 1)[::-1], bottom.values, "o",
             color="#cc3311", label=f"bottom {args.k}")
    ax0.set_xlabel("rank")
    ax0.set_ylabel(f"{args.roi} mean response (ncsnr > {args.min_ncsnr})")
    ax0.set_title(f"{scores.sizes['image']} {args.imageset} images, ranked")
    ax0.legend(frameon=False)
    bars = np.concatenate([top.values, bottom.values[::-1]])
    colors = ["#228833"] * args.k + ["#cc3311"] * args.k
    ax1.barh(np.arange(bars.size)[::-1], bars, color=colors)
    ax1.set_yticks(np.arange(bars.size)[::-1], names(top) + names(bottom)[::-1], fontsize=8)
    ax1.axvline(float(scores.mean()), color="0.3", ls="--", lw=1, label="mean of all images")
    ax1.set_xlabel("score")
    ax1.set_title(f"top and bottom {args.k}")
    ax1.legend(frameon=False, fontsize=8, loc="lower right")
    fig.suptitle(f"nest-data top_images: {args.roi}, mean of {len(args.subjects)} subjects"
                 + _example.demo_note(args))
    fig.tight_layout()
    return _example.save(fig, args.out / "top_images.png", dpi=90)


if __name__ == "__main__":
    main()
