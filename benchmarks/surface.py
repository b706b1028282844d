"""fsaverage surface stores: what one ROI reads, against the whole store and an index-order layout.

Run: ``python benchmarks/surface.py [--images 64] [--quick]``.  Writes a synthetic BERG
fsaverage encoder of full size (163,842 vertices per hemisphere, 31 ROIs scattered over the
vertex indices as on the icosahedral mesh) and a random ViT-B/32, converts them, and
generates a whole-surface store with ``nest_data.generate`` (chunks of 4,096 vertices, ROI
order).  For every ROI it reports the stored chunk objects that ``open(..., roi=)`` reads
and their bytes as a fraction of the store, next to the chunks the same ROI would touch if
vertices were stored in index order with the same chunking.  It then times reading one ROI
(FFA-1) and the whole surface (best of 5, warm page cache) in the same run.

The synthetic ROIs are spread uniformly over each hemisphere's vertex indices, the worst
case for an index-order layout; on the real mesh an ROI's vertices are spread over the index
range of every subdivision level.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from run import exit_on_sigterm

import nest_data
from nest_data._surface import N_FSAVERAGE_VERTICES
from nest_data.converters.weights import convert_weights
from nest_data.synthetic import (
    FSAVERAGE_ROI_LAYOUT,
    VIT_B_32_FILE,
    test_images,
    write_fsaverage_weights,
    write_image_folder,
    write_vit_b_32,
)

CHUNK = 4096


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="16 images")
    args = parser.parse_args()
    exit_on_sigterm()
    n_images = 16 if args.quick else args.images
    with tempfile.TemporaryDirectory() as tmp:
        src, root = Path(tmp) / "berg", Path(tmp) / "root"
        write_fsaverage_weights(src, 1, n_components=8)
        write_vit_b_32(src / VIT_B_32_FILE)
        convert_weights(src, root, vit_b_32=src / VIT_B_32_FILE, show_progress=False)
        write_image_folder(Path(tmp) / "images", test_images(n_images, 256))
        start = time.perf_counter()
        url = nest_data.generate(Path(tmp) / "images", root, imageset="nsd", subject=1,
                                 train_dataset="nsd_fsaverage", location=str(root),
                                 chunk_vertices=CHUNK, show_progress=False)
        print(f"generated {n_images} images x {2 * N_FSAVERAGE_VERTICES:,} vertices in "
              f"{time.perf_counter() - start:.1f} s")
        report(Path(url))


def report(store: Path) -> None:
    chunks = {p.relative_to(store / "responses" / "c").as_posix(): p.stat().st_size
              for p in (store / "responses" / "c").rglob("*") if p.is_file()}
    total = sum(chunks.values())
    n_cols = 1 + max(int(k.split("/")[1]) for k in chunks)
    vertex = np.asarray(zarr.open_array(store, path="vertex", mode="r")[...])
    print(f"store: {len(chunks)} chunk objects, {total / 2**20:.1f} MiB, {n_cols} vertex "
          "chunks per image chunk")
    print("| ROI | vertices | chunks read (ROI order) | bytes read | chunks in index order |")
    print("|---|---|---|---|---|")
    fractions = []
    for roi in FSAVERAGE_ROI_LAYOUT:
        name = "OVWFA" if roi == "OWFA" else roi
        positions = np.asarray(zarr.open_array(store, path=f"encoder/roi-{name}",
                                               mode="r")[...])
        cols = set((positions // CHUNK).tolist())
        read = [k for k in chunks if int(k.split("/")[1]) in cols]
        fraction = sum(chunks[k] for k in read) / total
        fractions.append(fraction)
        index_cols = len(set((vertex[positions] // CHUNK).tolist()))
        print(f"| {name} | {len(positions):,} | {len(cols)} of {n_cols} | {100 * fraction:.1f}% "
              f"| {index_cols} of {n_cols} |")
    print(f"median ROI reads {100 * np.median(fractions):.1f}% of the store's bytes")
    keys = {"imageset": "nsd", "subject": 1, "train_dataset": "nsd_fsaverage",
            "location": str(store.parents[4])}
    timings = {}
    for label, roi in (("FFA-1", "FFA-1"), ("whole surface", None)):
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            nest_data.open(roi=roi, **keys).mean("vertex").compute()
            best = min(best, time.perf_counter() - start)
        timings[label] = best
        print(f"open + mean over vertices, {label}: {1000 * best:.0f} ms")
    print(f"FFA-1 / whole surface time: {timings['FFA-1'] / timings['whole surface']:.3f}")


if __name__ == "__main__":
    main()
