"""Multivariate relational neural control: image batches on which two ROIs' representations
agree (align) or are unrelated (disentangle).

Runs on the demo data by default (synthetic values in NED's formats; 24 images, so the
batches are small)::

    python examples/multivariate_rnc.py --out figures/
    python examples/multivariate_rnc.py --location /data/nest --rois V1 V2 \\
        --batch-size 50 --n-batches 200 --generations 2000 --null-samples 1000000

Writes ``multivariate_rnc.png``: the score of the best batch per generation for both
controls against the null distribution of random batches, the final batches after
single-image swaps (``--refine``; 0 for RNC's search alone), and the subject-averaged RSMs
of both ROIs on the images each control chose.
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

logger = logging.getLogger("examples.multivariate_rnc")

COLORS = {"align": "#228833", "disentangle": "#cc3311", "null": "0.55"}


def subject_mean_rsm(tree: xr.DataTree, roi: str, images: np.ndarray,
                     subjects: list[int]) -> np.ndarray:
    """The RSM of ``images`` in ``roi`` averaged over subjects (what RNC's RSMs hold)."""
    rsms = [nest_data.rsm(tree[f"sub-{s:02d}/{roi}"]["responses"], images, min_ncsnr=0.5)
            for s in subjects]
    return np.asarray(xr.concat(rsms, "subject").mean("subject").values)


def main(argv: list[str] | None = None) -> Path:
    """Run multivariate RNC for both controls, log the batches, write the figure."""
    parser = _example.parser(__doc__)
    parser.add_argument("--imageset", default="nsd")
    parser.add_argument("--rois", nargs=2, default=["V1", "FFA-1"])
    parser.add_argument("--subjects", type=int, nargs="+", default=list(range(1, 9)))
    parser.add_argument("--batch-size", type=int, default=8, help="RNC: 50")
    parser.add_argument("--n-batches", type=int, default=20, help="RNC: 200")
    parser.add_argument("--generations", type=int, default=60, help="RNC: 2000")
    parser.add_argument("--null-samples", type=int, default=20_000, help="RNC: 1000000")
    parser.add_argument("--refine", type=int, default=20, help="swaps after the search")
    parser.add_argument("--seed", type=int, default=20200220)
    args = _example.start(parser, argv)

    tree = nest_data.open_many(imageset=args.imageset, subject=args.subjects, roi=args.rois,
                               location=args.location)
    res = nest_data.multivariate_rnc(tree, rois=args.rois, generations=args.generations,
                                     n_batches=args.n_batches, batch_size=args.batch_size,
                                     null_samples=args.null_samples, seed=args.seed,
                                     refine=args.refine)
    roi_1, roi_2 = args.rois
    null = res.null_distribution.values
    logger.info("null: mean %+.3f, 2.5-97.5%% %+.3f..%+.3f; baseline %+.3f", null.mean(),
                *np.percentile(null, [2.5, 97.5]), float(res.baseline_score))
    final = res.isel(generation=-1)
    if args.refine:  # the refined batches are the chosen ones
        final = final.assign(score=res.refined_score, image_index=res.refined_image_index,
                             image=res.refined_image)
    for control in ("align", "disentangle"):
        run = final.sel(control=control)
        swaps = f" after {int(res.refined_swaps.sel(control=control))} swaps" \
            if args.refine else ""
        logger.info("%-11s r = %+.4f%s on images %s", control, float(run.score), swaps,
                    ", ".join(str(v) for v in run.image.values))

    fig = plt.figure(figsize=(11, 6.8))
    grid = fig.add_gridspec(2, 4, height_ratios=[1, 1.05], hspace=0.55, wspace=0.35,
                            top=0.84)
    curve = fig.add_subplot(grid[0, :3])
    generation = res.generation.values
    low, high = np.percentile(null, [2.5, 97.5])
    curve.axhspan(low, high, color=COLORS["null"], alpha=0.25,
                  label=f"null: 95% of {null.size:,} random batches")
    curve.axhline(float(res.baseline_score), color=COLORS["null"], ls="--", lw=1,
                  label="baseline (random batch nearest the null mean)")
    for control in ("align", "disentangle"):
        curve.plot(generation, res.score.sel(control=control), color=COLORS[control], lw=2,
                   label=f"{control}: best batch")
        if args.refine:
            curve.plot(generation[-1], float(final.score.sel(control=control)), marker="*",
                       ms=12, color=COLORS[control], mec="k", clip_on=False, ls="none",
                       label=f"{control}: after "
                             f"{int(res.refined_swaps.sel(control=control))} swaps")
    curve.axhline(0, color="k", lw=0.5)
    curve.set_xlim(generation[0], generation[-1])
    ylim = (min(-0.1, float(res.score.min()), float(null.min())) - 0.02, 1.02)
    curve.set_ylim(*ylim)
    curve.set_xlabel("generation")
    curve.set_ylabel(f"Pearson r of the {roi_1}\nand {roi_2} RSMs (RSA)")
    curve.legend(frameon=False, fontsize=8, loc="lower left", ncol=2,
                 bbox_to_anchor=(0, 1.0))
    hist = fig.add_subplot(grid[0, 3], sharey=curve)
    hist.hist(null, bins=40, color=COLORS["null"], orientation="horizontal")
    for control in ("align", "disentangle"):
        hist.axhline(float(final.score.sel(control=control)), color=COLORS[control], lw=2,
                     label=f"final {control}")
    hist.set_xlabel("random batches")
    hist.set_title("null distribution", fontsize=9)
    hist.tick_params(labelleft=False)
    fig.suptitle(f"multivariate RNC, {args.imageset}: {roi_1} vs {roi_2}, RSMs averaged over "
                 f"{len(args.subjects)} subjects, batches of {args.batch_size}"
                 + _example.demo_note(args, sep="\n"),
                 fontsize=10, y=0.995)

    for col, (control, roi) in enumerate([(c, r) for c in ("align", "disentangle")
                                          for r in args.rois]):
        run = final.sel(control=control)
        ax = fig.add_subplot(grid[1, col])
        rsm = subject_mean_rsm(tree, roi, run.image_index.values, args.subjects)
        im = ax.imshow(rsm, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
        labels = [str(v) for v in run.image.values]
        ax.set_xticks(range(len(labels)), labels, fontsize=6, rotation=90)
        ax.set_yticks(range(len(labels)), labels, fontsize=6)
        ax.set_title(f"{control}: {roi}" + (f"\nr = {float(run.score):+.3f}" if col % 2
                                            else "\n"), fontsize=9, color=COLORS[control])
        if col == 0:
            ax.set_ylabel("chosen images (image label)", fontsize=8)
    fig.colorbar(im, ax=fig.axes[-4:], shrink=0.8, label="Pearson r (mean of subjects)")
    return _example.save(fig, args.out / "multivariate_rnc.png", dpi=90, bbox_inches="tight")


if __name__ == "__main__":
    main()
