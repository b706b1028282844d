"""Encoder throughput: images/s by batch size, peak memory, batching speed-up.

Run: ``python benchmarks/encode.py [--quick] [--device cpu] [--model fwrf eeg]``.  Writes
NEST-format weights with the miniature writer, converts them, and encodes images with
``nest_data.encode`` at several batch sizes: fwRF sub-01 V1 (1,350 voxels) and lateral (two
encoders, 7,799 voxels) on 425-pixel images (NSD's size); the EEG encoder (ViT-B/32 and a
full-size head: 250 PCA components of 460,800 features, 4 regressions) on 500-pixel images
(THINGS' size).  Each configuration runs in a fresh process, so
its peak memory (``ru_maxrss``) is its own; the first batch is a warm-up and not timed.
Batch size 1 is how NEST's own tools call their encoders (one image at a time): the
speed-up column is relative to it, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from run import exit_on_sigterm

CHILD = r"""
import json, resource, sys, time
import numpy as np, torch
import nest_data
root, roi, device = sys.argv[1], sys.argv[2], sys.argv[5]
batch, n = int(sys.argv[3]), int(sys.argv[4])
side = 500 if roi == "eeg" else 425
images = np.random.default_rng(0).integers(0, 256, (n + batch, side, side, 3), dtype=np.uint8)
which = dict(modality="eeg") if roi == "eeg" else dict(roi=roi)
kw = dict(subject=1, location=root, batch_size=batch, device=device, cache=False,
          show_progress=False, **which)
nest_data.encode(images[:batch], **kw)  # warm-up: weights, kernels
start = time.perf_counter()
nest_data.encode(images[batch:], **kw)
seconds = time.perf_counter() - start
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": seconds, "rss_mib": rss}))
"""


def run(root: str, roi: str, batch: int, n: int, device: str) -> dict[str, float]:
    """Encode ``n`` images at one batch size in a fresh process; return seconds and peak RSS."""
    out = subprocess.run([sys.executable, "-c", CHILD, root, roi, str(batch), str(n), device],
                         check=True, capture_output=True, text=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def main() -> None:
    """Print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, help="images per configuration")
    parser.add_argument("--batches", type=int, nargs="+", help="batch sizes")
    parser.add_argument("--model", nargs="+", default=["fwrf", "eeg"], choices=["fwrf", "eeg"])
    args = parser.parse_args()
    exit_on_sigterm()
    import torch

    from nest_data.converters.weights import convert_vit_b_32, convert_weights
    from nest_data.synthetic import (
        VIT_B_32_FILE,
        write_eeg_weights,
        write_fwrf_weights,
        write_vit_b_32,
    )

    n = args.images or (16 if args.quick else 64)
    batches = args.batches or ((1, 4, 16) if args.quick else (1, 4, 16, 32, 64))
    with tempfile.TemporaryDirectory() as tmp:
        src, root = Path(tmp) / "nest", Path(tmp) / "converted"
        rows = []
        if "fwrf" in args.model:
            for roi in ("V1", "lateral"):
                write_fwrf_weights(src, 1, roi)
            rows += [("V1", "fwRF V1 (1,350 voxels)"), ("lateral", "fwRF lateral (7,799 voxels)")]
        if "eeg" in args.model:
            write_eeg_weights(src, 1, n_components=250)
            convert_vit_b_32(write_vit_b_32(src / VIT_B_32_FILE), root)
            rows.append(("eeg", "EEG ViT-B/32 (4 x 63 x 140)"))
        convert_weights(src, root, trust_pickles=True)
        where = (torch.cuda.get_device_name() if args.device.startswith("cuda")
                 else f"{args.device}, {torch.get_num_threads()} threads")
        print(f"## Encoding on {where}, {n} images per configuration (fwRF: 425 px, EEG: "
              "500 px)\n")
        print("| encoder | batch size | images/s | speed-up vs one at a time | "
              "peak RSS (MiB) |")
        print("|---|---:|---:|---:|---:|")
        for roi, label in rows:
            base = None
            for batch in batches:
                result = run(str(root), roi, batch, n, args.device)
                rate = n / result["seconds"]
                base = base or rate
                print(f"| {label} | {batch} | {rate:.1f} | {rate / base:.2f} | "
                      f"{result['rss_mib']:.0f} |", flush=True)

if __name__ == "__main__":
    main()
