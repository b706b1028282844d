"""Benchmark of multivariate RNC: nest-data against RNC's own pipeline on the same data.

Usage::

    python benchmarks/multivariate_rnc.py            # 3,000 images, 8 subjects (~30 min)
    python benchmarks/multivariate_rnc.py --quick    # 600 images, for trying it out

Data: responses of two ROIs ("V1", "V2"; sub-01's published voxel counts, 1,350 and 1,433,
for every subject) of 8 subjects with planted structure: every image mixes latent features
shared by the two ROIs (weight ``w_i``) with features of each ROI's own (``1 - w_i``), through
each subject's own voxel weights, plus noise.  They are written in NED's exact file format by
:func:`nest_data.synthetic.write_ned` (which also writes NED's metadata with synthetic ncsnr)
and converted to Zarr stores by :func:`nest_data.converters.convert_ned`.

Two pipelines run on them, every step in its own subprocess (wall time and peak RSS are its
own):

- **RNC's** (``gifale95/RNC/04_multivariate_rnc``, re-implemented here from its arithmetic):
  ``01_create_rsms`` per subject and ROI (h5py, voxels with ncsnr > 0.5, Pearson r of every
  image pair, 50 partitions saved as float32 ``.npy``; the pairs are computed vectorised,
  and ``scipy.stats.pearsonr`` per pair, as RNC writes it, is timed on a sample and
  projected), ``02_merge_rsms`` (partitions appended, two subjects per float32 matrix,
  saved with h5py), ``03_average_rsms`` (``cv=0``), ``04_baseline`` (random batches drawn
  with ``sklearn.utils.resample``, sorted, scored with ``pearsonr``) and
  ``05_multivariate_rnc`` (RNC's genetic search: ``create_batches``, ``mutate``,
  ``evaluate``, ``select``, with NumPy's global seed as RNC sets it), for each control
  condition and seed.
- **nest-data's**: ``nest_data.multivariate_rnc`` on the Zarr stores, both controls and
  every seed in one call (side by side in threads), ``rsm_entries="auto"``.

Measured: time, peak RSS and bytes written of every step; the final scores of both searches
over the same generations for every seed (mean and SD); and the rates the projection to
the full ``nsd`` image set (73,000 images) needs: ``pearsonr`` per pair, RNC's ``evaluate``
per batch with RSMs of 73,000 images, nest-data's scores per batch computed on demand, and
the host-side work of a generation.  The GPU figures are projections from the H200's data
sheet (FP64 67 TFLOPS, 4.8 TB/s) at an assumed 50% efficiency, not measurements.  A Markdown
table is printed and written, with the raw JSON, to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from run import environment, exit_on_sigterm, run_with_peak_rss, tree_bytes, write_results

from nest_data.converters import convert_ned
from nest_data.synthetic import ned_file_paths, write_ned

logger = logging.getLogger("nest_data.benchmarks")

RESULTS_DIR = Path(__file__).resolve().parent / "results"
IMAGESET = "nsd"
SUBJECTS = list(range(1, 9))
ROIS = {"V1": 1350, "V2": 1433}
DATASET = "synthetic_neural_responses"
SIZES = {"full": {"n_images": 3000, "generations": 100, "seeds": [1, 2, 3, 4, 5],
                  "null_samples": 100_000},
         "quick": {"n_images": 600, "generations": 20, "seeds": [1, 2],
                   "null_samples": 5_000}}
N_BATCHES, BATCH_SIZE, SPLITS = 200, 50, 50  # RNC's defaults
REFINE = 50  # single-image swaps after nest-data's search (not in RNC)
FULL = {"n_images": 73000, "generations": 2000, "null_samples": 1_000_000}
H200 = {"flops": 67e12, "bytes_per_s": 4.8e12, "efficiency": 0.5, "memory": 141e9}

# ---------------------------------------------------------------------------- RNC's steps
# Written from RNC's scripts; each runs as ``python -c CODE ARGS_JSON`` and prints JSON.

_RNC_COMMON = """\
import json, sys, time
import numpy as np
from scipy.stats import pearsonr
from sklearn.utils import resample
a = json.loads(sys.argv[1])
tri_cache = {}

def evaluate(batches, rsm_1, rsm_2):  # utils.evaluate: pearsonr of the lower triangles
    tri = tri_cache.setdefault(batches.shape[1], np.tril_indices(batches.shape[1], -1))
    out = np.zeros(len(batches))
    for i, b in enumerate(batches):
        out[i] = pearsonr(rsm_1[b][:, b][tri], rsm_2[b][:, b][tri])[0]
    return out

def create_batches(count, size, n):  # utils.create_batches
    out = np.zeros((count, size), dtype=int)
    for i in range(count):
        out[i] = resample(np.arange(n), replace=False, n_samples=size)
    return out
"""

#: 01_create_rsms.py for one subject and ROI: every partition of the lower triangle, saved.
_RNC_CREATE = """\
import json, os, sys, time
import h5py
import numpy as np
a = json.loads(sys.argv[1])
t0 = time.perf_counter()
betas = h5py.File(a["h5"], "r").get(a["dataset"])
ncsnr = np.load(a["npy"], allow_pickle=True).item()["fmri"]["ncsnr"]
betas = betas[:, np.where(ncsnr > 0.5)[0]]
n = len(betas)
# pearsonr's arithmetic for every pair at once: rows centred and scaled to unit length
z = betas.astype(np.float64)
z -= z.mean(axis=1, keepdims=True)
z /= np.linalg.norm(z, axis=1, keepdims=True)
step = int(np.ceil(n / a["splits"]))
written = 0
for split in range(1, a["splits"] + 1):
    rows = np.arange(n)[step * (split - 1):step * split]
    rsm = np.zeros((len(rows), n), dtype=np.float32)
    block = z[rows] @ z.T
    for i, row in enumerate(rows):
        rsm[i, :row] = block[i, :row]  # c2 < cond_1: the strict lower triangle
    path = os.path.join(a["out"], f"rsm_sub-{a['subject']:02d}_{a['roi']}_split-{split:02d}.npy")
    np.save(path, rsm)
    written += os.path.getsize(path)
print(json.dumps({"seconds": time.perf_counter() - t0, "bytes": written,
                  "n_voxels": int(betas.shape[1])}))
"""

#: 02_merge_rsms.py then 03_average_rsms.py (cv=0) for one ROI.
_RNC_MERGE_AVERAGE = """\
import gc, json, os, sys, time
import h5py
import numpy as np
a = json.loads(sys.argv[1])
t0 = time.perf_counter()
n, subjects = a["n_images"], a["subjects"]
merged = np.zeros((int(np.ceil(len(subjects) / 2)), n, n), dtype=np.float32)
gc_s = 0.0
for s, sub in enumerate(subjects):
    for split in range(a["splits"]):
        name = f"rsm_sub-{sub:02d}_{a['roi']}_split-{split + 1:02d}.npy"
        part = np.load(os.path.join(a["dir"], name))
        rsm = part if split == 0 else np.append(rsm, part, 0)
        t = time.perf_counter()
        gc.collect()
        gc_s += time.perf_counter() - t
    if s % 2 == 0:
        merged[s // 2] += rsm
    else:
        merged[s // 2] += np.transpose(rsm)
    del rsm
    gc.collect()
merged_path = os.path.join(a["dir"], f"merged_rsms_{a['roi']}.h5py")
with h5py.File(merged_path, "w") as f:
    f.create_dataset("rsms", data=merged)
del merged
t1 = time.perf_counter()
rsms = h5py.File(merged_path, "r")["rsms"]
upper, lower = np.triu_indices(n, 1), np.tril_indices(n, -1)
average = np.zeros((n, n), dtype=np.float32)
for s in range(len(subjects)):
    m = rsms[s // 2]
    if s % 2 == 0:
        average[lower] += m[lower]
        average[upper] += np.transpose(m)[upper]
    else:
        average[upper] += m[upper]
        average[lower] += np.transpose(m)[lower]
average /= len(subjects)
avg_path = os.path.join(a["dir"], f"averaged_rsm_{a['roi']}_all_subjects.npy")
np.save(avg_path, average)
print(json.dumps({"merge_s": t1 - t0, "average_s": time.perf_counter() - t1, "gc_s": gc_s,
                  "merged_bytes": os.path.getsize(merged_path),
                  "averaged_bytes": os.path.getsize(avg_path)}))
"""

#: 04_baseline.py (cv=0).
_RNC_BASELINE = _RNC_COMMON + """\
np.random.seed(a["seed"])
t0 = time.perf_counter()
rsm_1, rsm_2 = np.load(a["rsm_1"]), np.load(a["rsm_2"])
t1 = time.perf_counter()
null = np.zeros(a["samples"])
images = np.zeros((a["samples"], a["batch_size"]), dtype=np.int32)
for s in range(a["samples"]):
    sample = resample(np.arange(len(rsm_1)), replace=False, n_samples=a["batch_size"])
    sample.sort()
    images[s] = sample
    null[s] = evaluate(sample[None], rsm_1, rsm_2)[0]
best = np.argsort(abs(null - np.mean(null)))[0]
print(json.dumps({"load_s": t1 - t0, "seconds": time.perf_counter() - t0,
                  "baseline_score": float(null[best]), "null_mean": float(null.mean()),
                  "baseline_images": images[best].tolist()}))
"""

#: 05_multivariate_rnc.py (cv=0) for one control condition and seed.
_RNC_SEARCH = _RNC_COMMON + """\
from copy import copy

def mutate(batches, n):  # utils.mutate
    size = batches.shape[1]
    counts = [1, round(size / 100 * 10), round(size / 100 * 25), round(size / 100 * 50),
              round(size / 100 * 75)]
    out = []
    for b in range(len(batches)):
        pool = np.isin(np.arange(n), batches[b], assume_unique=True, invert=True)
        for k in counts:
            where = resample(np.arange(size), replace=False, n_samples=k)
            new = resample(np.where(pool)[0], replace=False, n_samples=k)
            child = copy(batches[b])
            child[where] = new
            out.append(child)
    return np.asarray(out)

def select(control, batches, scores, count):  # utils.select
    order = np.argsort(scores)[::-1] if control == "align" else np.argsort(abs(scores))
    return batches[order][:count], scores[order][:count]

np.random.seed(a["seed"])
t0 = time.perf_counter()
rsm_1, rsm_2 = np.load(a["rsm_1"]), np.load(a["rsm_2"])
t1 = time.perf_counter()
n = len(rsm_1)
batches = create_batches(a["n_batches"], a["batch_size"], n)
best_scores = np.zeros(a["generations"])
best_batches = np.zeros((a["generations"], a["batch_size"]), dtype=int)
for g in range(a["generations"]):
    batches = np.append(batches, mutate(batches, n), 0)
    batches = np.append(batches, create_batches(len(batches), a["batch_size"], n), 0)
    batches.sort(1)
    scores = evaluate(batches, rsm_1, rsm_2)
    batches, scores = select(a["control"], batches, scores, a["n_batches"])
    best_scores[g], best_batches[g] = scores[0], batches[0]
print(json.dumps({"load_s": t1 - t0, "seconds": time.perf_counter() - t0,
                  "scores": best_scores.tolist(), "final_batch": best_batches[-1].tolist()}))
"""

#: RNC's ``evaluate`` of given batches on its averaged float32 RSM files.
_RNC_SCORE = _RNC_COMMON + """\
rsm_1, rsm_2 = np.load(a["rsm_1"]), np.load(a["rsm_2"])
print(json.dumps({k: evaluate(np.sort(np.asarray(v), axis=1), rsm_1, rsm_2).tolist()
                  for k, v in a["batches"].items()}))
"""

#: Exact (float64) scores of given batches through the public API, independently of
#: multivariate_rnc: each subject's RSM with nest_data.rsm, averaged, then Pearson r of the
#: triangles with nest_data.rsa.
_EXACT_SCORE = """\
import json, sys
import numpy as np
import xarray as xr
import nest_data
a = json.loads(sys.argv[1])
tree = nest_data.open_many(imageset="nsd", subject=a["subjects"], roi=["V1", "V2"],
                           location=a["root"])
def mean_rsm(roi, images):
    return xr.concat([nest_data.rsm(tree[f"sub-{s:02d}/{roi}"]["responses"], images,
                                    min_ncsnr=0.5) for s in a["subjects"]], "subject"
                     ).mean("subject")
out = {k: [float(nest_data.rsa(mean_rsm("V1", b), mean_rsm("V2", b), method="pearson"))
           for b in v] for k, v in a["batches"].items()}
print(json.dumps(out))
"""

#: nest-data: both controls and every seed in one call; then a few generations computed on
#: demand (numpy, and torch on the CPU) for the per-batch rates of the projection.
_NEST = """\
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import nest_data
a = json.loads(sys.argv[1])
t1 = time.perf_counter()
tree = nest_data.open_many(imageset="nsd", subject=a["subjects"], roi=["V1", "V2"],
                           location=a["root"])
res = nest_data.multivariate_rnc(tree, rois=("V1", "V2"), generations=a["generations"],
                                 seed=a["seeds"], null_samples=a["null_samples"],
                                 refine=a["refine"], show_progress=False)
t2 = time.perf_counter()
out = {"import_s": t1 - t0, "seconds": t2 - t1, "rsm_entries": res.attrs["rsm_entries"],
       "n_voxels": res.n_voxels.values.tolist(),
       "scores": {c: res.score.sel(control=c).values.tolist() for c in ("align", "disentangle")},
       "image_index": {c: res.image_index.sel(control=c).isel(generation=-1).values.tolist()
                       for c in ("align", "disentangle")},
       "refined_score": {c: res.refined_score.sel(control=c).values.tolist()
                         for c in ("align", "disentangle")},
       "refined_swaps": {c: res.refined_swaps.sel(control=c).values.tolist()
                         for c in ("align", "disentangle")},
       "refined_index": {c: res.refined_image_index.sel(control=c).values.tolist()
                         for c in ("align", "disentangle")},
       "baseline_score": res.baseline_score.values.tolist(),
       "null_mean": res.null_distribution.mean("null_sample").values.tolist()}
print(json.dumps(out))
"""

#: nest-data's rates for the projection: the responses pass, then a few generations on
#: demand (NumPy, and torch on the CPU) and in memory.
_NEST_RATES = """\
import json, sys, time
import nest_data
a = json.loads(sys.argv[1])
tree = nest_data.open_many(imageset="nsd", subject=a["subjects"], roi=["V1", "V2"],
                           location=a["root"])
out = {}
def timed(**kw):
    t = time.perf_counter()
    nest_data.multivariate_rnc(tree, rois=("V1", "V2"), control="align", null_samples=0,
                               show_progress=False, **kw)
    return time.perf_counter() - t
# the responses pass alone (one generation of 1 batch), then generations on demand
out["pass_s"] = timed(generations=1, n_batches=1, rsm_entries="on_demand")
gens = a["rate_generations"]
out["on_demand_s"] = timed(generations=gens, rsm_entries="on_demand") - out["pass_s"]
out["in_memory_s"] = timed(generations=gens, rsm_entries="in_memory")
# a refinement step on demand: one search with and one without refinement, best of 3
# each; the steps are the swaps taken plus the one that found no better swap
kw = dict(rois=("V1", "V2"), control="align", null_samples=0, generations=1, n_batches=1,
          rsm_entries="on_demand", show_progress=False)
best = {0: float("inf"), a["refine"]: float("inf")}
for _ in range(3):
    for refine in best:
        t = time.perf_counter()
        res = nest_data.multivariate_rnc(tree, refine=refine, **kw)
        best[refine] = min(best[refine], time.perf_counter() - t)
        if refine:
            swaps = int(res.refined_swaps)
out["refine_step_s"] = ((best[a["refine"]] - best[0])
                        / (swaps + (swaps < a["refine"])))
try:
    import torch  # noqa: F401
    out["torch_cpu_on_demand_s"] = (timed(generations=gens, rsm_entries="on_demand",
                                          device="cpu") - out["pass_s"])
except ImportError:
    pass
print(json.dumps(out))
"""


# ---------------------------------------------------------------------------- data


def planted(n_images: int, seed: int = 0) -> tuple[dict[tuple[str, str, int, str], np.ndarray],
                                                   np.ndarray]:
    """Responses ``(modality, imageset, subject, roi) -> (images, voxels)`` with shared and
    unique structure, and each image's shared weight ``w``."""
    rng = np.random.default_rng(seed)
    k = 8
    shared = rng.standard_normal((n_images, k))
    w = rng.beta(0.6, 0.6, n_images)
    out = {}
    for s in SUBJECTS:
        for roi, v in ROIS.items():
            unique = rng.standard_normal((n_images, k))
            x = (np.sqrt(w)[:, None] * (shared @ rng.standard_normal((k, v)))
                 + np.sqrt(1 - w)[:, None] * (unique @ rng.standard_normal((k, v)))
                 + 0.5 * rng.standard_normal((n_images, v)))
            out["fmri", IMAGESET, s, roi] = x.astype(np.float32)
    return out, w


def make_data(root: Path, n_images: int) -> tuple[Path, Path, np.ndarray]:
    responses, w = planted(n_images)
    src = write_ned(root / "ned", modalities=["fmri"], subjects=SUBJECTS, rois=list(ROIS),
                    imagesets=[IMAGESET], n_images=n_images, n_voxels=dict(ROIS),
                    responses=responses, show_progress=False)
    report = convert_ned(root / "ned", root / "zarr", workers=2, show_progress=False)
    if report.failed:
        raise RuntimeError(f"conversion failed: {report.failed}")
    return src, root / "zarr", w


# ---------------------------------------------------------------------------- stages


def child(code: str, args: dict[str, Any]) -> dict[str, Any]:
    stdout, peak_kib = run_with_peak_rss(code, json.dumps(args))
    out = json.loads(stdout.strip().splitlines()[-1])
    out["peak_rss_mib"] = peak_kib / 1024
    return out


def run_rnc(root: Path, n_images: int, size: dict[str, Any]) -> dict[str, Any]:
    """RNC's pipeline, step by step; the searches two at a time (two cores)."""
    rsm_dir = root / "rnc"
    rsm_dir.mkdir()
    out: dict[str, Any] = {"create": [], "merge": {}, "search": {}}
    for s in SUBJECTS:
        for roi in ROIS:
            h5, npy = ned_file_paths(root / "ned", "fmri", IMAGESET, s, roi)
            out["create"].append(child(_RNC_CREATE, {
                "h5": str(h5), "npy": str(npy), "dataset": DATASET, "out": str(rsm_dir),
                "subject": s, "roi": roi, "splits": SPLITS}))
    logger.info("RNC 01_create_rsms: %.1f s", sum(c["seconds"] for c in out["create"]))
    for roi in ROIS:
        out["merge"][roi] = child(_RNC_MERGE_AVERAGE, {
            "dir": str(rsm_dir), "roi": roi, "subjects": SUBJECTS, "splits": SPLITS,
            "n_images": n_images})
    out["disk_bytes"] = tree_bytes(rsm_dir)
    rsms = {f"rsm_{i + 1}": str(rsm_dir / f"averaged_rsm_{roi}_all_subjects.npy")
            for i, roi in enumerate(ROIS)}
    out["baseline"] = child(_RNC_BASELINE, {**rsms, "samples": size["null_samples"],
                                            "batch_size": BATCH_SIZE, "seed": 20200220})
    logger.info("RNC 04_baseline: %.1f s", out["baseline"]["seconds"])
    runs = [(c, s) for c in ("align", "disentangle") for s in size["seeds"]]
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = pool.map(lambda cs: child(_RNC_SEARCH, {
            **rsms, "control": cs[0], "seed": cs[1], "generations": size["generations"],
            "n_batches": N_BATCHES, "batch_size": BATCH_SIZE}), runs)
        for (c, s), result in zip(runs, done, strict=True):
            out["search"][f"{c}-{s}"] = result
            logger.info("RNC search %s seed %d: %.1f s, final %.4f", c, s,
                        result["seconds"], result["scores"][-1])
    out["search_wall_s"] = time.perf_counter() - start
    return out


def run_nest(zarr: Path, size: dict[str, Any]) -> dict[str, Any]:
    out = child(_NEST, {"root": str(zarr), "subjects": SUBJECTS,
                        "generations": size["generations"], "seeds": size["seeds"],
                        "null_samples": size["null_samples"], "refine": REFINE})
    logger.info("nest-data: %.1f s (%s)", out["seconds"], out["rsm_entries"])
    rates = child(_NEST_RATES, {"root": str(zarr), "subjects": SUBJECTS,
                                "rate_generations": 3, "refine": 10})
    out.update({k: v for k, v in rates.items() if k != "peak_rss_mib"})
    return out


def rescore(root: Path, zarr: Path, res: dict[str, Any]) -> dict[str, Any]:
    """Both methods' final batches scored both ways: exactly (float64, ``nest_data.rsm``
    and ``nest_data.rsa``) and RNC's way (its float32 RSM files and ``pearsonr``)."""
    batches = {}
    for c in ("align", "disentangle"):
        batches[f"nest-{c}"] = res["nest"]["image_index"][c]
        batches[f"refined-{c}"] = res["nest"]["refined_index"][c]
        batches[f"rnc-{c}"] = [res["rnc"]["search"][f"{c}-{s}"]["final_batch"]
                               for s in res["seeds"]]
    rsm_dir = root / "rnc"
    rnc_way = child(_RNC_SCORE, {
        "batches": batches, **{f"rsm_{i + 1}": str(rsm_dir / f"averaged_rsm_{roi}_all_subjects.npy")
                               for i, roi in enumerate(ROIS)}})
    exact = child(_EXACT_SCORE, {"batches": batches, "root": str(zarr), "subjects": SUBJECTS})
    return {"exact": {k: v for k, v in exact.items() if k != "peak_rss_mib"},
            "rnc_way": {k: v for k, v in rnc_way.items() if k != "peak_rss_mib"}}


def rates(n_voxels: list[float]) -> dict[str, float]:
    """Per-call costs measured here for the projection: ``pearsonr`` of one image pair over
    an ROI's kept voxels, RNC's ``evaluate`` of one batch with RSMs of 73,000 images, and
    nest-data's host-side work of one generation (mutations, new batches, ranking)."""
    from scipy.stats import pearsonr

    from nest_data.analysis.multivariate import _draw, _mutate, _ranked, mutation_sizes

    rng = np.random.default_rng(0)
    out: dict[str, float] = {}
    v = int(np.mean(n_voxels))
    x = rng.standard_normal((200, v))
    pairs = rng.integers(0, 200, (20000, 2))
    t = time.perf_counter()
    for i, j in pairs:
        pearsonr(x[i], x[j])
    out["pearsonr_pair_s"] = (time.perf_counter() - t) / len(pairs)
    # RNC's evaluate gathers 50 whole rows of each RSM: rows of 73,000 float32
    n_full = FULL["n_images"]
    rows = rng.standard_normal((3000, n_full), dtype=np.float32)
    tri = np.tril_indices(BATCH_SIZE, -1)
    batches = np.sort(rng.choice(3000, (400, BATCH_SIZE)), axis=1)
    columns = np.sort(rng.choice(n_full, (400, BATCH_SIZE)), axis=1)
    t = time.perf_counter()
    for b, cols in zip(batches, columns, strict=True):  # rsm[batch][:, batch], two ROIs
        pearsonr(rows[b][:, cols][tri], rows[b[::-1]][:, cols][tri])
    out["rnc_evaluate_73k_s"] = (time.perf_counter() - t) / len(batches)
    del rows
    from sklearn.utils import resample

    t = time.perf_counter()
    for _ in range(200):  # one new batch, or one mutation's new images
        resample(np.arange(n_full), replace=False, n_samples=BATCH_SIZE)
    out["rnc_resample_73k_s"] = (time.perf_counter() - t) / 200
    pop = np.sort(np.stack([rng.choice(n_full, BATCH_SIZE, replace=False)
                            for _ in range(N_BATCHES)]), axis=1)
    t = time.perf_counter()
    for _ in range(5):
        mutants = _mutate(rng, pop, n_full, mutation_sizes(BATCH_SIZE))
        _draw(rng, n_full, BATCH_SIZE, 6 * N_BATCHES)
        _ranked(rng.random(12 * N_BATCHES), "align")
    out["host_generation_s"] = (time.perf_counter() - t) / 5
    assert mutants.shape == (5 * N_BATCHES, BATCH_SIZE)
    t = time.perf_counter()
    _draw(rng, n_full, BATCH_SIZE, 65536)
    out["null_draw_s"] = (time.perf_counter() - t) / 65536  # one null batch, on the host
    return out


# ---------------------------------------------------------------------------- projection


def project(res: dict[str, Any]) -> dict[str, Any]:
    """Costs of RNC's defaults (2,000 generations, 1,000,000 null batches, both controls,
    cv=0) on 73,000 images x 8 subjects, from the rates measured here."""
    n, g, nulls = FULL["n_images"], FULL["generations"], FULL["null_samples"]
    n_small = res["n_images"]
    s = len(SUBJECTS)
    per_gen = 11 * N_BATCHES  # batches scored per generation (RNC: 12, parents included)
    nest, r = res["nest"], res["rates"]
    voxels = np.asarray(nest["n_voxels"], dtype=float)  # (roi, subject) kept
    d = voxels.sum(axis=1)  # per ROI, summed over subjects
    pairs = n * (n - 1) / 2
    out: dict[str, Any] = {}
    # RNC
    create_cpu = r["pearsonr_pair_s"] * pairs * s * len(ROIS)
    rnc_eval = r["rnc_evaluate_73k_s"]
    rnc_resample = r["rnc_resample_73k_s"]  # shuffles an arange(73000)
    # 12P batches scored; 6P new batches and 5P mutations drawn, each shuffling the images
    rnc_gen = 12 * N_BATCHES * rnc_eval + 11 * N_BATCHES * rnc_resample
    out["rnc"] = {
        "create_rsms_cpu_hours": create_cpu / 3600,
        "search_hours_per_control": g * rnc_gen / 3600,
        "baseline_hours": nulls * (rnc_eval + rnc_resample) / 3600,
        "disk_gb": (s * len(ROIS) + math.ceil(s / 2) * len(ROIS) + len(ROIS)) * n * n * 4 / 1e9,
        "disk_gb_cv": s * len(ROIS) * 2 * n * n * 4 / 1e9,
        "merge_memory_gb": (math.ceil(s / 2) + 2) * n * n * 4 / 1e9,
        "search_memory_gb": len(ROIS) * n * n * 4 / 1e9,
    }
    # nest-data on this machine: on demand (the RSMs of 73,000 images do not fit)
    gens = 3
    per_batch = nest["on_demand_s"] / (N_BATCHES * (1 + 11 * gens))
    out["nest_cpu"] = {
        "responses_pass_min": nest["pass_s"] * n / n_small / 60,
        "search_hours_per_control": g * (per_gen * per_batch + r["host_generation_s"]) / 3600,
        "null_hours": nulls * (per_batch + r["null_draw_s"]) / 3600,
        "memory_gb": n * d.sum() * 8 / 1e9,
        "refine_min": REFINE * nest["refine_step_s"] * n / n_small / 60,
        "in_memory_rsms_gb": len(ROIS) * n * n * 8 / 1e9,
    }
    # nest-data on an H200 (projection from the data sheet)
    flops = H200["flops"] * H200["efficiency"]
    bandwidth = H200["bytes_per_s"] * H200["efficiency"]
    build = 2 * n * n * d.sum() / flops  # every subject's RSM, both ROIs
    lookup = per_gen * BATCH_SIZE * (BATCH_SIZE - 1) / 2 * len(ROIS) * 8 / bandwidth * 8
    on_demand_gen = max(per_gen * 2 * BATCH_SIZE**2 * d.sum() / flops,
                        per_gen * BATCH_SIZE * d.sum() * 8 / bandwidth)
    out["nest_gpu"] = {
        "in_memory_rsms_gb": len(ROIS) * n * n * 8 / 1e9,
        "build_s": build,
        "search_min_per_control_in_memory": g * (r["host_generation_s"] + lookup) / 60,
        "search_min_per_control_on_demand": g * (r["host_generation_s"] + on_demand_gen) / 60,
        "null_s_in_memory": nulls * (BATCH_SIZE**2 * 8 * len(ROIS) / bandwidth * 8
                                     + r["null_draw_s"]),
        "refine_s_on_demand": REFINE * max(2 * n * BATCH_SIZE * d.sum() / flops,
                                           n * d.sum() * 8 / bandwidth),
    }
    return out


# ---------------------------------------------------------------------------- report


def fmt(value: float) -> str:
    """4 decimals, or 2 significant digits for values below 0.001 (disentangled |r|)."""
    return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.1e}"


def spread(values: list[float]) -> str:
    a = np.asarray(values)
    return f"{fmt(a.mean())} ± {fmt(a.std(ddof=1)) if a.size > 1 else 0}"


def markdown(res: dict[str, Any]) -> str:
    rnc, nest, p = res["rnc"], res["nest"], res["projection"]
    create_s = sum(c["seconds"] for c in rnc["create"])
    create_peak = max(c["peak_rss_mib"] for c in rnc["create"])
    merge_s = sum(m["merge_s"] + m["average_s"] for m in rnc["merge"].values())
    merge_peak = max(m["peak_rss_mib"] for m in rnc["merge"].values())
    searches = rnc["search"].values()
    search_s = rnc["search_wall_s"]
    search_peak = max(x["peak_rss_mib"] for x in searches)
    rnc_total = create_s + merge_s + rnc["baseline"]["seconds"] + search_s
    seeds = res["seeds"]
    lines = [
        f"Measured {res['timestamp'][:16].replace('T', ' ')} UTC on "
        f"{res['environment']['cpus']} CPUs "
        f"({res['environment']['platform']}); code {res['environment']['git']['commit'][:10]}; "
        f"load average {res['environment']['loadavg_1min_start']:.1f} at the start, "
        f"{res.get('loadavg_end', [float('nan')] * 3)[2]:.1f} over the last 15 min.",
        "",
        f"{res['n_images']:,} images x 8 subjects, V1 ({ROIS['V1']} voxels) and V2 "
        f"({ROIS['V2']}), ncsnr > 0.5 keeps {int(np.sum(nest['n_voxels']))} of "
        f"{8 * sum(ROIS.values())}; batches of {BATCH_SIZE}, {N_BATCHES} per generation, "
        f"{res['generations']} generations, {len(seeds)} seeds x 2 controls, "
        f"{res['null_samples']:,} null batches.",
        "",
        "| Step | RNC's pipeline | time (s) | peak RSS (MiB) | written (MB) |",
        "|---|---|---:|---:|---:|",
        f"| RSMs | `01_create_rsms` (vectorised pairs), 16 entries x {SPLITS} partitions | "
        f"{create_s:.1f} | {create_peak:.0f} | "
        f"{sum(c['bytes'] for c in rnc['create']) / 1e6:.0f} |",
        f"| | the same pairs with `scipy.stats.pearsonr`, as RNC writes it (projected) | "
        f"{res['rates']['pearsonr_pair_s'] * res['n_images'] * (res['n_images'] - 1) / 2 * 16:.0f}"
        " | | |",
        f"| | `02_merge_rsms` + `03_average_rsms`, 2 ROIs (of which RNC's `gc.collect()` "
        f"after every partition: {sum(m['gc_s'] for m in rnc['merge'].values()):.1f} s) | "
        f"{merge_s:.1f} | {merge_peak:.0f} | "
        f"{sum(m['merged_bytes'] + m['averaged_bytes'] for m in rnc['merge'].values()) / 1e6:.0f}"
        " |",
        f"| Null | `04_baseline` | {rnc['baseline']['seconds']:.1f} | "
        f"{rnc['baseline']['peak_rss_mib']:.0f} | |",
        f"| Search | `05_multivariate_rnc`, {len(rnc['search'])} runs, two at a time (wall) | "
        f"{search_s:.1f} | {search_peak:.0f} | |",
        f"| Total | | {rnc_total:.1f} | {max(create_peak, merge_peak, search_peak):.0f} | "
        f"{rnc['disk_bytes'] / 1e6:.0f} |",
        "",
        "| Step | nest-data | time (s) | peak RSS (MiB) | written (MB) |",
        "|---|---|---:|---:|---:|",
        f"| All | `multivariate_rnc` (`rsm_entries={nest['rsm_entries']!r}`), both controls, "
        f"{len(seeds)} seeds, null | {nest['seconds']:.1f} | {nest['peak_rss_mib']:.0f} | 0 |",
        f"| | ratio RNC / nest-data | {rnc_total / nest['seconds']:.1f}x | | |",
        "",
        f"Final scores after {res['generations']} generations (mean ± SD over seeds "
        f"{', '.join(map(str, seeds))}):",
        "",
        f"| control | RNC's search | nest-data | nest-data, `refine={REFINE}` | per seed (RNC "
        "/ nest-data / refined) | swaps taken |",
        "|---|---:|---:|---:|---|---|",
    ]
    for c in ("align", "disentangle"):
        ours = [s[-1] for s in nest["scores"][c]]
        refined = nest["refined_score"][c]
        theirs = [rnc["search"][f"{c}-{s}"]["scores"][-1] for s in seeds]
        f = (lambda v: v) if c == "align" else abs
        what = "r" if c == "align" else "\\|r\\|"  # escaped: a cell of a Markdown table
        lines.append(f"| {c} ({what}) | "
                     f"{spread([f(v) for v in theirs])} | {spread([f(v) for v in ours])} | "
                     f"{spread([f(v) for v in refined])} | "
                     + ", ".join(f"{fmt(f(a))} / {fmt(f(b))} / {fmt(f(x))}"
                                 for a, b, x in zip(theirs, ours, refined, strict=True))
                     + f" | {', '.join(map(str, nest['refined_swaps'][c]))} |")
    lines += [
        f"| baseline | {rnc['baseline']['baseline_score']:.4f} | "
        f"{spread(list(np.ravel(nest['baseline_score'])))} | | | |",
        "",
    ]
    if "rescored" in res:
        lines += [
            "The same final batches scored both ways, exactly (float64: `nest_data.rsm` per "
            "subject, averaged, `nest_data.rsa`) and RNC's way (its averaged float32 RSM "
            "files, `pearsonr`):",
            "",
            "| control | batches of | exactly | RNC's way |",
            "|---|---|---:|---:|",
        ]
        for c in ("align", "disentangle"):
            f = (lambda v: v) if c == "align" else abs
            for who, name in (("rnc", "RNC's search"), ("nest", "nest-data"),
                              ("refined", f"nest-data, `refine={REFINE}`")):
                key = f"{who}-{c}"
                lines.append(f"| {c} | {name} | "
                             f"{spread([f(v) for v in res['rescored']['exact'][key]])} | "
                             f"{spread([f(v) for v in res['rescored']['rnc_way'][key]])} |")
        lines.append("")
    lines += [
        "Projection to RNC's defaults on all 73,000 `nsd` images x 8 subjects (2,000 "
        "generations, 1,000,000 null batches, align and disentangle, cv=0), same voxels:",
        "",
        "| | RNC's pipeline, this machine | nest-data, this machine (NumPy, on demand) | "
        "nest-data, H200 (data sheet at 50% efficiency) |",
        "|---|---|---|---|",
        f"| RSMs | {p['rnc']['create_rsms_cpu_hours']:,.0f} CPU-hours of `pearsonr`; "
        f"{p['rnc']['disk_gb']:,.0f} GB on disk ({p['rnc']['disk_gb_cv']:,.0f} GB more for "
        f"cv); merge holds {p['rnc']['merge_memory_gb']:.0f} GB | none; responses pass "
        f"{p['nest_cpu']['responses_pass_min']:.1f} min, {p['nest_cpu']['memory_gb']:.1f} GB "
        f"in memory | RSMs in GPU memory ({p['nest_gpu']['in_memory_rsms_gb']:.0f} GB) in "
        f"{p['nest_gpu']['build_s']:.0f} s |",
        f"| Search, per control | {p['rnc']['search_hours_per_control']:.1f} h "
        f"({p['rnc']['search_memory_gb']:.0f} GB of RSMs loaded) | "
        f"{p['nest_cpu']['search_hours_per_control']:.1f} h | "
        f"{p['nest_gpu']['search_min_per_control_in_memory']:.1f} min (on demand: "
        f"{p['nest_gpu']['search_min_per_control_on_demand']:.1f} min) |",
        f"| Null | {p['rnc']['baseline_hours']:.1f} h | {p['nest_cpu']['null_hours']:.1f} h | "
        f"{p['nest_gpu']['null_s_in_memory']:.1f} s |",
        f"| `refine={REFINE}` (not in RNC), per control | | "
        f"{p['nest_cpu']['refine_min']:.1f} min | "
        f"{p['nest_gpu']['refine_s_on_demand']:.1f} s (on demand) |",
        "",
        f"Rates measured here: `pearsonr` of one pair {res['rates']['pearsonr_pair_s'] * 1e6:.0f}"
        f" µs; RNC's `evaluate` of one batch with 73,000-image RSMs "
        f"{res['rates']['rnc_evaluate_73k_s'] * 1e3:.2f} ms; nest-data on demand "
        f"{nest['on_demand_s'] / (N_BATCHES * 34) * 1e3:.2f} ms per batch (NumPy)"
        + (f", {nest['torch_cpu_on_demand_s'] / (N_BATCHES * 34) * 1e3:.2f} ms (torch, CPU)"
           if "torch_cpu_on_demand_s" in nest else "")
        + f"; in memory, building the RSMs then 3 generations {nest['in_memory_s']:.1f} s; "
        f"a refinement step on demand {nest['refine_step_s'] * 1e3:.0f} ms; "
        f"host-side work of a generation {res['rates']['host_generation_s'] * 1e3:.0f} ms, "
        f"of a null batch {res['rates'].get('null_draw_s', float('nan')) * 1e6:.1f} µs.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="600 images, 20 generations")
    parser.add_argument("--tmp", type=Path, default=None, help="folder for the data")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    exit_on_sigterm()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    mode = "quick" if args.quick else "full"
    size = SIZES[mode]
    env = environment()
    started = time.perf_counter()
    res: dict[str, Any] = {"mode": mode, **size, "environment": env,
                           "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    with tempfile.TemporaryDirectory(prefix="nest-data-mvrnc-", dir=args.tmp) as tmp:
        root = Path(tmp)
        _, zarr, _ = make_data(root, size["n_images"])
        res["store_bytes"] = {"ned_h5": tree_bytes(root / "ned"), "zarr": tree_bytes(zarr)}
        res["nest"] = run_nest(zarr, size)
        res["rnc"] = run_rnc(root, size["n_images"], size)
        res["rescored"] = rescore(root, zarr, res)
    res["rates"] = rates(np.asarray(res["nest"]["n_voxels"]).ravel().tolist())
    res["projection"] = project(res)
    res["total_s"] = time.perf_counter() - started
    res["loadavg_end"] = os.getloadavg()
    table = markdown(res)
    md_path, json_path = write_results(res, table, args.out, "multivariate_rnc")
    print(table)
    logger.info("wrote %s and %s (total %.0f s)", md_path, json_path, res["total_s"])
    return 0


if __name__ == "__main__":
    os.environ.setdefault("NEST_DATA_PROGRESS", "0")
    sys.exit(main())
