"""What images would drive V1, FFA-1 and PPA most, and which pixels of an image drive FFA-1?

Runs on the demo data by default, whose fwRF encoders are random weights in NEST's format
(so the dreams look synthetic: they show what the method does, not what FFA-1 likes)::

    python examples/dreams.py --out figures/
    python examples/dreams.py --location /data/nest --steps 512 --device cuda

Writes ``dreams.png``: per ROI, the dreamed images with their score against the best image
of the demo's image set; one dream of the FFA-1-up/PPA-down contrast; and a saliency map
(integrated gradients) of FFA-1 over the image set's best image.
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
from nest_data import objectives as obj
from nest_data import plot_saliency
from nest_data.synthetic import test_images

logger = logging.getLogger("examples.dreams")


def main(argv: list[str] | None = None) -> Path:
    """Dream for each ROI and a contrast, explain one image, write the figure."""
    parser = _example.parser(__doc__, location="where the converted weights are")
    parser.add_argument("--subject", type=int, default=1)
    parser.add_argument("--rois", nargs="+", default=["V1", "FFA-1", "PPA"])
    parser.add_argument("--n", type=int, default=2, help="dreams per ROI")
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--size", type=int, default=227)
    parser.add_argument("--device", default="cpu")
    args = _example.start(parser, argv)
    keys = {"subject": args.subject, "location": args.location}
    # the demo's image set: the images its fsaverage store was generated from
    images = test_images(24, 256, seed=0)

    fig, axes = plt.subplots(len(args.rois) + 1, args.n + 1,
                             figsize=(2.4 * (args.n + 1) + 0.8, 2.5 * (len(args.rois) + 1)))
    for row, roi in enumerate(args.rois):
        stored = nest_data.encode(images, roi=roi, **keys).mean("voxel")
        best = int(np.argmax(stored.values))
        tree = nest_data.dream(subject=args.subject, roi=roi, n=args.n, steps=args.steps,
                               size=args.size, location=args.location, device=args.device)
        scores = tree["score"].values
        logger.info("%s: dreams score %s; the best of %d images %+.4f", roi,
                    ", ".join(f"{s:+.4f}" for s in scores), stored.sizes["image"],
                    float(stored[best]))
        axes[row, 0].imshow(images[best])
        axes[row, 0].set_title(f"best image\n{roi} {float(stored[best]):+.4f}", fontsize=8)
        for k in range(args.n):
            axes[row, k + 1].imshow(tree["images"].values[k].transpose(1, 2, 0))
            axes[row, k + 1].set_title(f"dream {k}\n{roi} {scores[k]:+.4f}", fontsize=8)
    contrast = nest_data.dream(obj.contrast("FFA-1", "PPA"), subject=args.subject, n=1,
                               steps=args.steps, size=args.size, location=args.location,
                               device=args.device)
    ffa = float(contrast["FFA-1"].to_dataset()["responses"].mean())
    ppa = float(contrast["PPA"].to_dataset()["responses"].mean())
    logger.info("contrast FFA-1 up, PPA down: FFA-1 %+.4f, PPA %+.4f", ffa, ppa)
    last = axes[-1]
    last[0].imshow(contrast["images"].values[0].transpose(1, 2, 0))
    last[0].set_title(f"FFA-1 up, PPA down\nFFA-1 {ffa:+.4f} PPA {ppa:+.4f}", fontsize=8)
    ffa_scores = nest_data.encode(images, roi="FFA-1", **keys).mean("voxel")
    chosen = images[int(np.argmax(ffa_scores.values))]
    maps = nest_data.saliency(chosen, roi="FFA-1", steps=32, device=args.device, **keys)
    last[1].imshow(chosen)
    last[1].set_title("best FFA-1 image", fontsize=8)
    if args.n > 1:
        plot_saliency(last[2], chosen, maps.sum("rgb").values[0])
        last[2].set_title("FFA-1 saliency\n(integrated gradients)", fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in last[3 if args.n > 1 else 2:]:
        ax.set_visible(False)
    fig.suptitle(f"nest-data dreams, subject {args.subject}, {args.steps} steps"
                 + _example.demo_note(args, "random weights, synthetic-looking dreams"),
                 fontsize=10)
    fig.tight_layout()
    return _example.save(fig, args.out / "dreams.png", dpi=90)


if __name__ == "__main__":
    main()
