"""Representational similarity on the fly: RSMs of an image subset and RSA between entries.

Runs on the demo data by default (synthetic values in NED's formats)::

    python examples/rsa.py --out figures/
    python examples/rsa.py --location /data/nest --imageset nsd --n-images 1000

Writes ``rsa.png``: the RSMs of two ROIs of one subject (Pearson r between the images'
response patterns, computed from the responses of the chosen images only) and the RSA
(Spearman r between RSMs) between every subject and ROI.
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import _example
import matplotlib.pyplot as plt
import numpy as np

import nest_data

logger = logging.getLogger("examples.rsa")


def main(argv: list[str] | None = None) -> Path:
    """Compute the RSMs and the RSA matrix, and write the figure; return its path."""
    parser = _example.parser(__doc__)
    parser.add_argument("--imageset", default="things")
    parser.add_argument("--rois", nargs="+", default=["V1", "V2", "FFA-1", "PPA"])
    parser.add_argument("--subjects", type=int, nargs="+", default=list(range(1, 9)))
    parser.add_argument("--n-images", type=int, default=None,
                        help="a random subset of this many images (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    args = _example.start(parser, argv)

    tree = nest_data.open_many(imageset=args.imageset, subject=args.subjects, roi=args.rois,
                               location=args.location)
    first = tree[f"sub-{args.subjects[0]:02d}/{args.rois[0]}"]["responses"]
    n_total = first.sizes["image"]
    images = (np.arange(n_total) if args.n_images is None else np.sort(
        np.random.default_rng(args.seed).choice(n_total, args.n_images, replace=False)))

    # Two RSMs of one subject, and their RSA.
    shown = [tree[f"sub-{args.subjects[0]:02d}/{roi}"]["responses"]
             for roi in (args.rois[0], args.rois[-1])]
    rsms = [nest_data.rsm(da, images, min_ncsnr=0.5) for da in shown]
    pair = nest_data.rsa(*rsms)
    # Every subject x ROI, grouped by ROI: one lazy graph, computed once.
    entries = [tree[f"sub-{s:02d}/{roi}"]["responses"] for roi in args.rois
               for s in args.subjects]
    matrix = nest_data.rsa_matrix(entries, images, min_ncsnr=0.5)
    rsm_a, rsm_b, pair, matrix = (x.compute() for x in (*rsms, pair, matrix))
    logger.info("RSA (Spearman) between sub-%02d %s and %s on %d images: %.3f",
                args.subjects[0], args.rois[0], args.rois[-1], images.size, float(pair))
    for roi in args.rois:
        within = matrix.sel(entry=matrix.roi == roi, entry_2=matrix.roi_2 == roi).values
        logger.info("mean RSA between subjects within %-6s %.3f", roi,
                    within[np.triu_indices_from(within, k=1)].mean())

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.6),
                             gridspec_kw={"width_ratios": [1, 1, 1.15]})
    label = "concept" if "concept" in rsm_a.coords else "image"
    ticks = [str(v) for v in rsm_a[label].values]
    for ax, r, da in zip(axes[:2], (rsm_a, rsm_b), shown, strict=True):
        im = ax.imshow(r.values, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
        ax.set_title(f"RSM sub-{args.subjects[0]:02d} {da.attrs['roi']}, "
                     f"{images.size} images")
        if images.size <= 30:
            ax.set_xticks(range(images.size), ticks, rotation=90, fontsize=6)
            ax.set_yticks(range(images.size), ticks, fontsize=6)
        fig.colorbar(im, ax=ax, fraction=0.046, label="Pearson r")
    im = axes[2].imshow(matrix.values, cmap="viridis", vmin=min(0.0, float(matrix.min())),
                        vmax=1, interpolation="nearest")
    n_sub = len(args.subjects)
    centers = [i * n_sub + (n_sub - 1) / 2 for i in range(len(args.rois))]
    axes[2].set_xticks(centers, args.rois)
    axes[2].set_yticks(centers, args.rois)
    for edge in range(1, len(args.rois)):
        for line in (axes[2].axhline, axes[2].axvline):
            line(edge * n_sub - 0.5, color="w", lw=1)
    axes[2].set_title(f"RSA between ROIs x {n_sub} subjects")
    fig.colorbar(im, ax=axes[2], fraction=0.046, label="Spearman r between RSMs")
    fig.suptitle(f"nest-data rsm / rsa, {args.imageset}: RSA({args.rois[0]}, "
                 f"{args.rois[-1]}) = {float(pair):.2f}"
                 + _example.demo_note(args))
    fig.tight_layout()
    return _example.save(fig, args.out / "rsa.png", dpi=80)


if __name__ == "__main__":
    main()
