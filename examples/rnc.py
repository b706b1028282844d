"""Univariate relational neural control: images that drive two ROIs together or apart.

Runs on the demo data by default (synthetic values in NED's formats; 24 images, so the
batches and selections are small)::

    python examples/rnc.py --out figures/
    python examples/rnc.py --location /data/nest --rois V1 FFA-1 --n-images 25 \\
        --batch-size 25 --n-batches 1000000

Writes ``rnc.png``: every image's subject-averaged score in the two ROIs, the baselines, and
the images selected for each control condition.
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import _example
import matplotlib.pyplot as plt

import nest_data

logger = logging.getLogger("examples.rnc")

STYLE = {"up_up": ("#228833", "^"), "down_down": ("#4477aa", "v"),
         "up_down": ("#cc3311", ">"), "down_up": ("#ee7733", "<")}


def main(argv: list[str] | None = None) -> Path:
    """Run univariate RNC, log the selected images, and write the figure; return its path."""
    parser = _example.parser(__doc__)
    parser.add_argument("--imageset", default="nsd")
    parser.add_argument("--rois", nargs=2, default=["V1", "FFA-1"])
    parser.add_argument("--subjects", type=int, nargs="+", default=list(range(1, 9)))
    parser.add_argument("--n-images", type=int, default=3, help="images per condition")
    parser.add_argument("--batch-size", type=int, default=5)
    parser.add_argument("--n-batches", type=int, default=100_000)
    parser.add_argument("--margin", type=float, default=0.04)
    parser.add_argument("--seed", type=int, default=20200220)
    args = _example.start(parser, argv)

    tree = nest_data.open_many(imageset=args.imageset, subject=args.subjects, roi=args.rois,
                               location=args.location)
    # The scores are computed once (one pass over every subject and ROI) and used both for
    # RNC and for the scatter plot.
    means = nest_data.roi_means(tree, min_ncsnr=0.5).compute()
    res = nest_data.univariate_rnc(means, rois=args.rois, n_images=args.n_images,
                                   batch_size=args.batch_size, n_batches=args.n_batches,
                                   margin=args.margin, seed=args.seed)
    roi_1, roi_2 = args.rois
    logger.info("baselines: %s %+.3f, %s %+.3f (%d batches of %d images)", roi_1,
                res.baseline.values[0], roi_2, res.baseline.values[1], args.n_batches,
                args.batch_size)
    for condition in STYLE:
        sel = res.sel(image=res.condition == condition)
        logger.info("%-9s %s", condition, ", ".join(
            f"image {int(i)} ({a:+.2f}, {b:+.2f})" for i, a, b in
            zip(sel.image.values, sel.score.values[0], sel.score.values[1], strict=True))
            or "no image qualifies")

    scores = means.mean("subject")
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    ax.scatter(scores.sel(roi=roi_1), scores.sel(roi=roi_2), s=14, color="0.7",
               label=f"all {scores.sizes['image']} images")
    ax.axvline(res.baseline.values[0], color="0.3", ls="--", lw=1)
    ax.axhline(res.baseline.values[1], color="0.3", ls="--", lw=1, label="baselines")
    for condition, (color, marker) in STYLE.items():
        sel = res.sel(image=res.condition == condition)
        if sel.sizes["image"]:
            ax.scatter(sel.score.values[0], sel.score.values[1], s=70, color=color,
                       marker=marker, edgecolor="k", linewidth=0.5,
                       label=f"{condition} ({sel.control.values[0]!s})")
    ax.set_xlabel(f"{roi_1} mean response (mean of {len(args.subjects)} subjects)")
    ax.set_ylabel(f"{roi_2} mean response (mean of {len(args.subjects)} subjects)")
    ax.set_title(f"univariate RNC, {args.imageset}: {roi_1} vs {roi_2}"
                 + _example.demo_note(args, sep="\n"))
    ax.legend(frameon=False, fontsize=8, loc="best")
    fig.tight_layout()
    return _example.save(fig, args.out / "rnc.png", dpi=90)


if __name__ == "__main__":
    main()
