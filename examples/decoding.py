"""neuralbench's fMRI image-decoding task on in silico fsaverage5 responses.

Responses on fsaverage5 (the first 10,242 vertices of each fsaverage hemisphere) -> a linear
decoder (ridge, or contrastive as CLIP) trained from nest_data.torch's batches -> ViT-B/32
embeddings of the images -> retrieval of each held-out image among all held-out images,
top-1 and top-5 accuracy against chance.

On real data the responses are a stored nsd entry and NSD's shared 1,000 images are held
out (``heldout_split`` does it by the ``shared1000`` coordinate; see
docs/guide/decoding.md).  The demo holds no nsd image pixels and only 24 images per image
set, so the example makes ``--n-images`` synthetic images, computes their whole-surface
responses with the demo's fsaverage encoder (random weights in BERG's format on a random
ViT-B/32), and holds a seeded random ``--test-fraction`` of them out.  Every number it
prints is SYNTHETIC.  Writes ``decoding.png``: accuracies against chance, and the images
retrieved for a few held-out images::

    python examples/decoding.py --out figures/
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import _example
import matplotlib.pyplot as plt
import numpy as np
import xarray as xr
from torch.utils.data import DataLoader

import nest_data
from nest_data.analysis import surface_space
from nest_data.decoding import decode_images, heldout_split, image_embeddings
from nest_data.torch import ResponseBatches

logger = logging.getLogger("examples.decoding")


def demo_responses(n_images: int, subject: int, seed: int
                   ) -> tuple[xr.DataArray, np.ndarray, list[str]]:
    """fsaverage5 responses of synthetic images, computed by the demo's fsaverage encoder."""
    from nest_data.synthetic import test_images

    images = test_images(n_images, 256, seed=seed)
    ids = [f"synthetic-{i:04d}" for i in range(n_images)]
    encoder = nest_data.encoder(subject=subject, train_dataset="nsd_fsaverage",
                                location="demo")
    parts = []
    for start in range(0, n_images, 100):  # 100 whole surfaces (131 MB) at a time
        whole = encoder.encode(images[start:start + 100], image_ids=ids[start:start + 100])
        parts.append(surface_space(whole, "fsaverage5"))
    return xr.concat(parts, dim="image"), images, ids


def main(argv: list[str] | None = None) -> Path:
    """Decode, log the accuracies, write the figure; return its path."""
    parser = _example.parser(__doc__, location=None)
    parser.add_argument("--subject", type=int, default=1)
    parser.add_argument("--n-images", type=int, default=600, help="synthetic images")
    parser.add_argument("--test-fraction", type=float, default=1 / 6,
                        help="images held out (on nsd: the shared 1,000)")
    parser.add_argument("--epochs", type=int, default=50, help="contrastive decoder")
    parser.add_argument("--seed", type=int, default=0)
    args = _example.start(parser, argv)
    stored = nest_data.open(imageset="things", subject=args.subject,
                            train_dataset="nsd_fsaverage", location="demo")
    fs5 = surface_space(stored, "fsaverage5")
    logger.info("the demo's stored surface: %d images x %d vertices; on fsaverage5: %d "
                "vertices (lazy, nothing read yet)", stored.sizes["image"],
                stored.sizes["vertex"], fs5.sizes["vertex"])
    responses, images, ids = demo_responses(args.n_images, args.subject, args.seed)
    rng = np.random.default_rng(args.seed)
    test = rng.permutation(len(ids))[:round(args.test_fraction * len(ids))]
    train, held_out = heldout_split(responses, test=test)
    embeddings = image_embeddings(images, image_ids=ids, location="demo")
    pixels = dict(zip(ids, images, strict=True))
    what = (f"SYNTHETIC: {len(ids)} synthetic images, responses of the demo's random "
            f"fsaverage encoder (sub-{args.subject:02d}) on fsaverage5, embeddings by its "
            "random ViT-B/32")

    # the decoders train from the PyTorch pipeline: shuffled batches, a new order per epoch
    pipeline = DataLoader(ResponseBatches(train, batch_size=128, seed=args.seed),
                          batch_size=None)
    results = {}
    for decoder in ("ridge", "clip"):
        results[decoder] = decode_images(pipeline, held_out, embeddings, decoder=decoder,
                                         epochs=args.epochs, seed=args.seed)
    shuffled = embeddings.copy()
    shuffled["image"] = np.random.default_rng(args.seed + 1).permutation(ids)
    results["ridge, shuffled labels"] = decode_images(pipeline, held_out, shuffled)
    for name, result in results.items():
        logger.info("%-23s top-1 %.3f  top-5 %.3f  (chance %.3f, %.3f; %d test images)%s",
                    name, *result.accuracy.values, *result.chance.values,
                    result.attrs["n_test"],
                    f"  ridge penalty {result.attrs['alpha']:g}" if "alpha" in result.attrs
                    else "")
    return plot(results, pixels, what, args.out / "decoding.png")


def plot(results: dict[str, xr.Dataset], pixels: dict[str, Any], what: str,
         path: Path) -> Path:
    """Accuracies against chance (left); a few held-out images and their top-5 (right)."""
    ridge = results["ridge"]
    n_rows = 4
    fig = plt.figure(figsize=(11, 5.6), layout="constrained")
    left, right = fig.subfigures(1, 2, width_ratios=[1, 1.35])  # type: ignore[misc]
    ax = left.subplots()
    names = list(results)
    width = 0.38
    for j, k in enumerate(ridge.k.values):
        values = [results[n].accuracy.sel(k=k).item() for n in names]
        bars = ax.bar(np.arange(len(names)) + (j - 0.5) * width, values, width,
                      label=f"top-{k}", color=["#4477aa", "#66ccee"][j])
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
        ax.axhline(ridge.chance.sel(k=k).item(), color=["#4477aa", "#66ccee"][j], ls="--",
                   lw=1, label=f"chance, top-{k} ({ridge.chance.sel(k=k).item():.3f})")
    ax.set_xticks(np.arange(len(names)), [n.replace(", ", ",\n") for n in names])
    ax.set_ylabel(f"retrieval accuracy among {ridge.attrs['n_test']} held-out images")
    top = max(r.accuracy.max().item() for r in results.values())
    ax.set_ylim(0, min(1.05, 1.3 * top + 0.05))
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title("Decoding fsaverage5 responses into ViT-B/32 embeddings", fontsize=10)
    axes = right.subplots(n_rows, 6)
    for row, label in enumerate(ridge.image.values[:n_rows]):
        tiles = [label, *ridge.retrieved.sel(image=label).values]
        for col, name in enumerate(tiles):
            a = axes[row, col]
            a.imshow(pixels[str(name)])
            a.set_xticks([])
            a.set_yticks([])
            hit = col > 0 and name == label
            for spine in a.spines.values():
                spine.set_color("#228833" if hit else "0.6")
                spine.set_linewidth(3 if hit else 0.5)
            if row == 0:
                a.set_title("held out" if col == 0 else f"top-{col}", fontsize=8)
    right.suptitle(f"Ridge: the images retrieved for the first {n_rows} held-out images "
                   "(green: the image itself)", fontsize=9)
    fig.suptitle(f"{what}\n{machine()}, {datetime.now(UTC):%Y-%m-%d}", fontsize=8)
    return _example.save(fig, path, dpi=110)


def machine() -> str:
    """This machine in a few words: cores, memory, GPU."""
    import torch

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} cores, {memory:.0f} GB, {gpu}"


if __name__ == "__main__":
    main()
