"""Dreams: optimisation steps/s and peak memory, and the objective gained.

Run: ``python benchmarks/dream.py [--quick] [--device cpu|cuda] [--steps N]``.  Writes fwRF
weights of sub-01 V1 and FFA-1 (and, unless ``--quick``, a ViT-B/32 backbone with an
fsaverage encoder of the real size) with the miniature writers, converts them, and runs
``nest_data.dream`` at 227 pixels: the fwRF ROI mean for 1 and 4 images, the FFA-1/PPA-style
contrast (two encoders each step), and the fsaverage FFA-1 mean through the ViT-B/32 at 224
pixels.  Each configuration runs in a fresh process, so its peak memory (``ru_maxrss``, and
the CUDA peak on a GPU) is its own; the first steps (weights, kernels) run before the timing.
The gain column is the final objective over the objective of the starting images
(``objective`` at step 0), for random weights.
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
import torch
import nest_data
from nest_data import objectives as obj
root, case, device = sys.argv[1], sys.argv[2], sys.argv[5]
n, steps = int(sys.argv[3]), int(sys.argv[4])
goal = {"fwrf": obj.roi_mean("V1"), "contrast": obj.contrast("V1", "FFA-1"),
        "surface": obj.roi_mean("FFA-1", train_dataset="nsd_fsaverage")}[case]
size = 224 if case == "surface" else 227
kw = dict(subject=1, n=n, size=size, location=root, device=device, show_progress=False)
nest_data.dream(goal, steps=2, **kw)  # warm-up: weights, kernels
if device.startswith("cuda"):
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
start = time.perf_counter()
tree = nest_data.dream(goal, steps=steps, **kw)
if device.startswith("cuda"):
    torch.cuda.synchronize()
seconds = time.perf_counter() - start
trajectory = tree["objective"].values
print(json.dumps({"seconds": seconds,
                  "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "cuda_mib": torch.cuda.max_memory_allocated() / 2**20
                  if device.startswith("cuda") else 0.0,
                  "start": float(trajectory[0].mean()), "end": float(tree["score"].mean())}))
"""


def run(root: str, case: str, n: int, steps: int, device: str) -> dict[str, float]:
    """Dream in a fresh process; return seconds, peak memory and the objective's ends."""
    out = subprocess.run([sys.executable, "-c", CHILD, root, case, str(n), str(steps), device],
                         check=True, capture_output=True, text=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def main() -> None:
    """Print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fwRF only, fewer steps")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, help="timed steps per configuration")
    args = parser.parse_args()
    exit_on_sigterm()
    import torch

    from nest_data.converters.weights import convert_weights
    from nest_data.synthetic import (
        VIT_B_32_FILE,
        write_fsaverage_weights,
        write_fwrf_weights,
        write_vit_b_32,
    )

    steps = args.steps or (10 if args.quick else 30)
    cases = [("fwrf", 1, "fwRF V1 mean (1,350 voxels), 227 px"),
             ("fwrf", 4, "fwRF V1 mean (1,350 voxels), 227 px"),
             ("contrast", 4, "contrast V1 up / FFA-1 down (2 fwRF encoders), 227 px")]
    if not args.quick:
        cases.append(("surface", 1, "fsaverage FFA-1 mean (ViT-B/32, 327,684 vertices), "
                                    "224 px"))
    with tempfile.TemporaryDirectory() as tmp:
        src, root = Path(tmp) / "nest", Path(tmp) / "converted"
        for roi in ("V1", "FFA-1"):
            write_fwrf_weights(src, 1, roi)
        vit = None
        if not args.quick:
            write_fsaverage_weights(src, 1, n_components=100)
            vit = write_vit_b_32(src / VIT_B_32_FILE)
        convert_weights(src, root, vit_b_32=vit, trust_pickles=True)
        where = (torch.cuda.get_device_name() if args.device.startswith("cuda")
                 else f"{args.device}, {torch.get_num_threads()} threads")
        print(f"## Dreams on {where}, {steps} timed steps per configuration\n")
        print("| objective | images | steps/s | images x steps/s | peak RSS (MiB) | "
              "CUDA peak (MiB) | objective: start -> end (gain) |")
        print("|---|---:|---:|---:|---:|---:|---|")
        for case, n, label in cases:
            result = run(str(root), case, n, steps, args.device)
            rate = steps / result["seconds"]
            start, end = result["start"], result["end"]
            gain = f"{end / start:.1f}x" if start > 0 else "n/a"
            print(f"| {label} | {n} | {rate:.2f} | {rate * n:.1f} | {result['rss_mib']:.0f} | "
                  f"{result['cuda_mib']:.0f} | {start:+.4f} -> {end:+.4f} ({gain}) |",
                  flush=True)


if __name__ == "__main__":
    main()
