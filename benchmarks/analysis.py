"""Benchmark of nest-data's analyses on full-size, NSD-shaped data.

Usage::

    python benchmarks/analysis.py            # 73,000 images, 2 ROIs x 8 subjects (~10 min)
    python benchmarks/analysis.py --quick    # 7,300 images, for trying the script out

Data: :func:`nest_data.synthetic.write_ned` writes NED's exact files (synthetic values) for
the ``nsd`` image set, subjects 1-8, ROIs V1 and FFA-1 (sub-01's published voxel counts,
fixed variations for the others), and :func:`nest_data.converters.convert_ned` converts them,
into a temporary folder that is removed at the end (peak disk use about 9 GB).  Measured:

1. **Univariate RNC** (V1 vs FFA-1, 8 subjects, ncsnr > 0.5, 1,000,000 baseline batches of
   25): ``nest_data.univariate_rnc`` on the Zarr stores against RNC's own way, as in
   ``gifale95/RNC/02_univariate_rnc`` (h5py on NED's files, ``np.nanmean``, a Python loop
   over the random batches), in two variants: RNC's h5py column selection
   (``dset[:, best_voxels]``) and loading each file whole (``dset[:]``).  Each method runs
   in its own subprocess: wall time and peak RSS (``ru_maxrss``) are its own.
2. **RSM of 1,000 images** (sub-01 V1): ``nest_data.rsm`` (z-scored rows, one matrix
   product) against a pairwise ``scipy.stats.pearsonr`` loop and ``numpy.corrcoef``.
3. **dask workers**: the ROI means of the 16 entries on a ``LocalCluster`` of 1 and of 2
   worker processes (1 thread each).
4. **Out of core**: a reduction over one store several times larger than each worker's
   ``memory_limit`` (sub-01 ``lateral``, 73,000 x 7,799), with the workers' peak RSS.
5. **``roi_mean`` against h5py** on mid-size entries (sub-01 ``lateral``, 7,799 voxels, of
   12,000 and 26,107 images): ``nest_data.roi_mean`` (dask threads) against h5py reading
   NED's file in blocks of 4,096 rows, interleaved, best of 9.

Figures are ratios within one run.  The page cache is warm for every method (the files
were just written).  A Markdown table is printed and written, with the raw JSON, to
``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import scipy.stats
from run import (
    environment,
    exit_on_sigterm,
    run_with_peak_rss,
    scan_h5py_blocks,
    time_interleaved,
    tree_bytes,
    write_results,
)

import nest_data
from nest_data._shards import layout_of
from nest_data.converters import convert_ned
from nest_data.synthetic import ned_file_paths, write_ned

logger = logging.getLogger("nest_data.benchmarks")

IMAGESET = "nsd"
SUBJECTS = list(range(1, 9))
ROIS = ["V1", "FFA-1"]
BIG_ROI = "lateral"
N_IMAGES = {"full": 73000, "quick": 7300}
N_BATCHES = {"full": 1_000_000, "quick": 100_000}
RSM_IMAGES = {"full": 1000, "quick": 300}
SELECT_IMAGES = {"full": 10000, "quick": 1000}
ROI_MEAN_ROWS = {"full": (12000, 26107), "quick": (1200, 2611)}
WORKER_MEMORY = "512MiB"
DATASET = "synthetic_neural_responses"
SEED = 20200220
RESULTS_DIR = Path(__file__).resolve().parent / "results"

#: nest-data's univariate RNC, run in its own process (argv: location, n_batches, out.npy).
_NEST_RNC = """\
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import nest_data
t1 = time.perf_counter()
tree = nest_data.open_many(imageset="nsd", subject=list(range(1, 9)), roi=["V1", "FFA-1"],
                           location=sys.argv[1])
means = nest_data.roi_means(tree, min_ncsnr=0.5).compute()
t2 = time.perf_counter()
res = nest_data.univariate_rnc(means, rois=("V1", "FFA-1"), n_batches=int(sys.argv[2]),
                               n_images=25, batch_size=25, margin=0.04, seed=20200220,
                               show_progress=False)
t3 = time.perf_counter()
np.save(sys.argv[3], means.mean("subject").values)
print(json.dumps({"import_s": t1 - t0, "scores_s": t2 - t1, "baseline_s": t3 - t2,
                  "total_s": t3 - t1, "baseline": res.baseline.values.tolist(),
                  "selected": {c: res.image.values[res.condition.values == c].tolist()
                               for c in ("up_up", "down_down", "up_down", "down_up")}}))
"""

#: Univariate RNC as RNC's scripts do it (argv: JSON of files, n_batches, mode, out.npy).
_RNC_STYLE = """\
import json, sys, time
t0 = time.perf_counter()
import h5py
import numpy as np
t1 = time.perf_counter()
files, n_batches, mode, out = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
n_sub, n_roi, n_img = len(files), len(files[0]), int(sys.argv[5])
uni_resp = np.zeros((n_sub, n_roi, n_img), dtype=np.float32)
for s in range(n_sub):
    for r in range(n_roi):
        h5, npy = files[s][r]
        betas = h5py.File(h5, "r").get("synthetic_neural_responses")
        ncsnr = np.load(npy, allow_pickle=True).item()["fmri"]["ncsnr"]
        best_voxels = np.where(ncsnr > 0.5)[0]
        if mode == "whole":
            betas = betas[:][:, best_voxels]
        else:
            betas = betas[:, best_voxels]
        uni_resp[s, r] = np.nanmean(betas, 1)
        del betas
uni_resp_mean = np.mean(uni_resp, 0)
t2 = time.perf_counter()
rng = np.random.default_rng(20200220)
null_distribution = np.zeros((n_roi, n_batches))
batch_images = np.zeros((n_batches, 25), dtype=np.int32)
for i in range(n_batches):
    sample = np.sort(rng.choice(n_img, 25, replace=False))
    batch_images[i] = sample
    null_distribution[:, i] = uni_resp_mean[:, sample].mean(1)
baseline = np.zeros(n_roi)
for r in range(n_roi):
    best = np.argsort(abs(null_distribution[r] - null_distribution[r].mean()))[0]
    baseline[r] = null_distribution[r, best]
margin = 0.04
r1, r2 = uni_resp_mean
selected = {}
for name, key, ok in (
        ("up_up", r1 + r2, (r1 >= baseline[0] + margin) & (r2 >= baseline[1] + margin)),
        ("down_down", -(r1 + r2), (r1 <= baseline[0] - margin) & (r2 <= baseline[1] - margin)),
        ("up_down", r1 - r2, (r1 >= baseline[0] + margin) & (r2 <= baseline[1] - margin)),
        ("down_up", r2 - r1, (r1 <= baseline[0] - margin) & (r2 >= baseline[1] + margin))):
    order = np.argsort(key)[::-1]
    selected[name] = [int(i) for i in order[ok[order]][:25]]
t3 = time.perf_counter()
np.save(out, uni_resp_mean)
print(json.dumps({"import_s": t1 - t0, "scores_s": t2 - t1, "baseline_s": t3 - t2,
                  "total_s": t3 - t1, "baseline": baseline.tolist(), "selected": selected}))
"""


# ---------------------------------------------------------------------------- data


def make_data(root: Path, n_images: int, rois: list[str], subjects: list[int]) -> Path:
    """Write NED's files for ``rois`` x ``subjects`` and convert them; return the Zarr root."""
    src, dest = root / "ned", root / "zarr"
    start = time.perf_counter()
    write_ned(src, modalities=["fmri"], subjects=subjects, rois=rois, imagesets=[IMAGESET],
              n_images=n_images, workers=2, show_progress=True)
    written = time.perf_counter()
    report = convert_ned(src, dest, workers=2, show_progress=True)
    if report.failed:
        raise RuntimeError(f"conversion failed: {report.failed}")
    logger.info("wrote %s x %s (%.1f GB of HDF5) in %.0f s, converted in %.0f s", subjects,
                rois, tree_bytes(src) / 1e9, written - start, time.perf_counter() - written)
    return dest


def ned_files(root: Path) -> list[list[tuple[str, str]]]:
    """``[subject][roi] -> (h5, npy)`` paths of the NED source."""
    return [[tuple(str(p) for p in ned_file_paths(root / "ned", "fmri", IMAGESET, s, r))
             for r in ROIS] for s in SUBJECTS]


# ---------------------------------------------------------------------------- stages


def measure_rnc(root: Path, dest: Path, n_images: int, n_batches: int) -> dict[str, Any]:
    """Univariate RNC through nest-data and RNC's way, each in a subprocess."""
    out: dict[str, Any] = {}
    files = json.dumps(ned_files(root))
    runs = {
        "nest_data": (_NEST_RNC, [str(dest), str(n_batches)]),
        "rnc_columns": (_RNC_STYLE, [files, str(n_batches), "columns"]),
        "rnc_whole": (_RNC_STYLE, [files, str(n_batches), "whole"]),
    }
    scores = {}
    for key, (code, args) in runs.items():
        npy = root / f"scores-{key}.npy"
        argv = [*args, str(npy)] + ([] if key == "nest_data" else [str(n_images)])
        stdout, peak_kib = run_with_peak_rss(code, *argv)
        child = json.loads(stdout.strip().splitlines()[-1])
        child["peak_rss_mib"] = peak_kib / 1024
        scores[key] = np.load(npy)
        out[key] = child
        logger.info("RNC %-12s scores %.2f s, baseline+selection %.2f s, peak RSS %.0f MiB",
                    key, child["scores_s"], child["baseline_s"], child["peak_rss_mib"])
    for key in ("rnc_columns", "rnc_whole"):
        diff = float(np.max(np.abs(scores[key] - scores["nest_data"])))
        if diff > 1e-4:
            raise AssertionError(f"ROI scores differ between nest-data and {key}: {diff}")
        overlap = {c: len(set(out[key]["selected"][c]) & set(out["nest_data"]["selected"][c]))
                   for c in out[key]["selected"]}
        out[key]["max_score_diff"] = diff
        out[key]["selected_overlap"] = overlap
    return out


def measure_rsm(root: Path, dest: Path, n_total: int, k: int, rounds: int = 7
                ) -> dict[str, Any]:
    """RSM of ``k`` random images of sub-01 V1: nest-data and numpy, best of ``rounds``
    interleaved (so both run warm: imports, thread pools and BLAS started), split into the
    reading and the arithmetic; and the pairwise pearsonr loop (once)."""
    from nest_data.analysis.similarity import _self_product, _unit_rows

    images = np.sort(np.random.default_rng(0).choice(n_total, k, replace=False))
    da = nest_data.open(imageset=IMAGESET, subject=1, roi="V1", location=str(dest))
    h5, _ = ned_file_paths(root / "ned", "fmri", IMAGESET, 1, "V1")

    def h5_rows() -> np.ndarray:
        with h5py.File(h5, "r") as f:
            return f[DATASET][images]

    x = h5_rows()
    ways: dict[str, Callable[[], Any]] = {
        "nest_data": lambda: nest_data.rsm(da, images).values,
        "numpy": lambda: np.corrcoef(h5_rows()),
        "nest_data_read": lambda: nest_data.select_images(da, images).values,  # rsm's read
        "isel_read": lambda: da.isel(image=images).values,  # dask's generic selection
        "h5py_read": h5_rows,
        "nest_data_arithmetic": lambda: _self_product(_unit_rows(x)),
        "numpy_arithmetic": lambda: np.corrcoef(x),
    }
    times = time_interleaved(ways, rounds)
    ours, corr = ways["nest_data"](), ways["numpy"]()
    np.testing.assert_array_equal(ways["nest_data_read"](), x)

    start = time.perf_counter()
    rows = h5_rows()
    loop = np.eye(k)
    for i in range(k):
        for j in range(i + 1, k):
            loop[i, j] = loop[j, i] = scipy.stats.pearsonr(rows[i], rows[j]).statistic
    loop_s = time.perf_counter() - start
    diff = float(max(np.abs(ours - loop).max(), np.abs(ours - corr).max()))
    if diff > 1e-5:
        raise AssertionError(f"RSMs disagree by {diff}")
    inner = _inner_rows(dest)
    chunks = len(np.unique(images // inner))
    row_bytes = int(da.sizes["voxel"]) * 4
    best = {f"{key}_s": min(t) for key, t in times.items()}
    logger.info("RSM of %d images: %s", k, ", ".join(f"{key} {v * 1e3:.1f} ms"
                                                      for key, v in best.items()))
    return {"images": k, "voxels": int(da.sizes["voxel"]), "rounds": rounds, **best,
            "nest_data_first_s": times["nest_data"][0], "numpy_first_s": times["numpy"][0],
            "pearsonr_loop_s": loop_s, "max_abs_diff": diff, "inner_rows": inner,
            "chunks_read": chunks, "nest_data_read_mb": chunks * (inner * row_bytes + 4) / 1e6,
            "h5py_read_mb": k * row_bytes / 1e6}


def measure_select(root: Path, dest: Path, n_total: int, k: int, rounds: int = 7
                   ) -> dict[str, Any]:
    """``select_images`` of ``k`` random images of sub-01 V1, its tasks run side by side
    and all in one task, against h5py reading the same rows, best of ``rounds``
    interleaved."""
    import nest_data._dask

    images = np.sort(np.random.default_rng(1).choice(n_total, k, replace=False))
    da = nest_data.open(imageset=IMAGESET, subject=1, roi="V1", location=str(dest))
    h5, _ = ned_file_paths(root / "ned", "fmri", IMAGESET, 1, "V1")
    split = nest_data._dask._TAKE_TASK_BYTES

    def one_task() -> np.ndarray:
        nest_data._dask._TAKE_TASK_BYTES = 2**62
        try:
            return nest_data.select_images(da, images).values
        finally:
            nest_data._dask._TAKE_TASK_BYTES = split

    def h5_rows() -> np.ndarray:
        with h5py.File(h5, "r") as f:
            return f[DATASET][images]

    ways: dict[str, Callable[[], Any]] = {
        "nest_data": lambda: nest_data.select_images(da, images).values,
        "one_task": one_task, "h5py": h5_rows}
    times = time_interleaved(ways, rounds)
    expected = h5_rows()
    for key in ("nest_data", "one_task"):
        np.testing.assert_array_equal(ways[key](), expected)
    tasks = nest_data.select_images(da, images).data.npartitions
    best = {f"{key}_s": min(t) for key, t in times.items()}
    logger.info("select_images of %d images in %d tasks: %s", k, tasks,
                ", ".join(f"{key} {v * 1e3:.1f} ms" for key, v in best.items()))
    return {"images": k, "rounds": rounds, "tasks": tasks,
            "task_mb": split / 2**20, **best}


def measure_top(root: Path, dest: Path, k: int = 10, rounds: int = 5) -> dict[str, Any]:
    """``top_images`` of sub-01 V1 (voxels with ncsnr > 0.5) against the same with h5py on
    NED's file (blocks of rows, NaN-aware mean, argsort), best of ``rounds`` interleaved."""
    da = nest_data.open(imageset=IMAGESET, subject=1, roi="V1", location=str(dest))
    h5, npy = ned_file_paths(root / "ned", "fmri", IMAGESET, 1, "V1")
    keep = np.load(npy, allow_pickle=True).item()["fmri"]["ncsnr"] > 0.5

    def h5py_way() -> np.ndarray:
        with h5py.File(h5, "r") as f:
            ds = f[DATASET]
            scores = np.concatenate([np.nanmean(ds[i:i + 4096][:, keep], axis=1)
                                     for i in range(0, ds.shape[0], 4096)])
        return np.argsort(-scores, kind="stable")[:k]

    def ours() -> np.ndarray:
        top = nest_data.top_images(da, k=k, min_ncsnr=0.5, show_progress=False)
        return np.asarray(top["image"].values)

    times = time_interleaved({"nest_data": ours, "h5py": h5py_way}, rounds)
    same = int(np.isin(ours(), h5py_way()).sum())
    logger.info("top_images: nest-data %.3f s, h5py %.3f s; %d of %d images the same",
                min(times["nest_data"]), min(times["h5py"]), same, k)
    return {"k": k, "nest_data_s": min(times["nest_data"]), "h5py_s": min(times["h5py"]),
            "same_images": same, "mb": float(da.nbytes) / 1e6}


def _inner_rows(dest: Path) -> int:
    """Images per inner chunk of sub-01 V1's store."""
    entry = nest_data.catalog().resolve(imageset=IMAGESET, subject=1, roi="V1")
    meta = json.loads((dest / entry.path / "responses" / "zarr.json").read_text())
    layout = layout_of(meta)
    if layout is None:
        raise RuntimeError(f"{entry.path} is not in nest-data's sharded layout")
    return layout.inner_rows


def measure_workers(dest: Path, repeats: int = 2) -> dict[str, Any]:
    """ROI means of every entry on LocalClusters of 1 and 2 worker processes."""
    from distributed import Client, LocalCluster

    tree = nest_data.open_many(imageset=IMAGESET, subject=SUBJECTS, roi=ROIS,
                               location=str(dest))
    out: dict[str, Any] = {}
    for n in (1, 2):
        with LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                          host="127.0.0.1", dashboard_address=":0") as cluster, \
                Client(cluster):
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                nest_data.roi_means(tree, min_ncsnr=0.5).compute()
                times.append(time.perf_counter() - start)
        out[f"{n}_workers_s"] = min(times)
        logger.info("ROI means on %d worker(s): best of %d %.2f s", n, repeats, min(times))
    return out


def measure_out_of_core(root: Path, n_images: int) -> dict[str, Any]:
    """Reduce one store several times larger than each worker's memory limit."""
    from dask.utils import parse_bytes
    from distributed import Client, LocalCluster

    big = root / "big"
    dest = make_data(big, n_images, [BIG_ROI], [1])
    h5, _ = ned_file_paths(big / "ned", "fmri", IMAGESET, 1, BIG_ROI)
    with h5py.File(h5, "r") as f:  # reference, in blocks
        dset = f[DATASET]
        expected = np.concatenate([dset[i:i + 4096].mean(axis=1)
                                   for i in range(0, dset.shape[0], 4096)])
    shutil.rmtree(big / "ned")
    entry = nest_data.catalog().resolve(imageset=IMAGESET, subject=1, roi=BIG_ROI)
    store_bytes = tree_bytes(dest / entry.path)
    da = nest_data.open(imageset=IMAGESET, subject=1, roi=BIG_ROI, location=str(dest))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=":0", memory_limit=WORKER_MEMORY) as cluster, \
            Client(cluster) as client:
        before = set(client.scheduler_info()["workers"])
        start = time.perf_counter()
        means = nest_data.roi_mean(da).compute()
        voxel_means = da.mean("image").compute()
        seconds = time.perf_counter() - start
        # The workers' own memory monitor (sampled every 500 ms): ru_maxrss would include
        # the parent's pages from before the worker process started.
        peaks = client.run(_monitored_peak_rss)
        if set(client.scheduler_info()["workers"]) != before:
            raise AssertionError("a worker was restarted during the out-of-core reduction")
    np.testing.assert_allclose(means.values, expected, rtol=1e-5, atol=1e-6)
    limit = parse_bytes(WORKER_MEMORY)
    out = {"store_gb": store_bytes / 1e9, "values_gb": da.nbytes / 1e9,
           "memory_limit": WORKER_MEMORY, "values_over_limit": da.nbytes / limit,
           "seconds": seconds, "worker_peak_rss_mib": [v / 2**20 for v in peaks.values()],
           "voxel_means_finite": bool(np.isfinite(voxel_means.values).all())}
    logger.info("out of core: %.2f GB of values, workers limited to %s, %.1f s, worker "
                "peaks %s MiB", out["values_gb"], WORKER_MEMORY, seconds,
                [round(v) for v in out["worker_peak_rss_mib"]])
    return out


def measure_roi_mean(root: Path, rows: tuple[int, ...], rounds: int = 9
                     ) -> list[dict[str, Any]]:
    """``roi_mean`` of sub-01 ``lateral`` with ``rows`` images against h5py reading NED's
    file in blocks of rows, best of ``rounds`` interleaved; the data is removed after."""
    out = []
    for n in rows:
        folder = root / f"roi-mean-{n}"
        dest = make_data(folder, n, [BIG_ROI], [1])
        h5, _ = ned_file_paths(folder / "ned", "fmri", IMAGESET, 1, BIG_ROI)
        da = nest_data.open(imageset=IMAGESET, subject=1, roi=BIG_ROI, location=str(dest))
        times = time_interleaved({"nest_data": lambda da=da: nest_data.roi_mean(da).values,
                                  "h5py": lambda h5=h5: scan_h5py_blocks(h5)}, rounds)
        np.testing.assert_allclose(nest_data.roi_mean(da).values, scan_h5py_blocks(h5),
                                   rtol=1e-5, atol=1e-6)
        best = {k: min(v) for k, v in times.items()}
        out.append({"images": n, "voxels": da.sizes["voxel"], "mb": da.nbytes / 1e6,
                    "tasks": nest_data.roi_mean(da).data.npartitions, "rounds": rounds,
                    "nest_data_s": best["nest_data"], "h5py_s": best["h5py"],
                    "ratio": best["h5py"] / best["nest_data"]})
        logger.info("roi_mean of %d x %d: %.3f s, h5py %.3f s (%.2fx)", n, da.sizes["voxel"],
                    best["nest_data"], best["h5py"], out[-1]["ratio"])
        shutil.rmtree(folder)
    return out


def _monitored_peak_rss(dask_worker: Any) -> int:
    """Largest RSS (bytes) a worker's system monitor recorded."""
    return int(max(dask_worker.monitor.quantities["memory"]))


# ---------------------------------------------------------------------------- report


def markdown(res: dict[str, Any]) -> str:
    """The results as a Markdown section."""
    rnc, rsm, workers, ooc = res["rnc"], res["rsm"], res["workers"], res["out_of_core"]
    top, sel = res["top"], res["select"]
    env = res["environment"]
    nest = rnc["nest_data"]
    lines = [
        f"## nest-data analysis benchmark ({res['mode']}): {res['n_images']} nsd images, "
        f"{' + '.join(ROIS)} x {len(SUBJECTS)} subjects ({res['source_gb']:.2f} GB of "
        "float32)",
        "",
        f"{res['timestamp']}; code {env['git']['commit']}"
        f"{' + uncommitted changes' if env['git']['changed'] else ''}; {env['cpus']} CPUs; "
        f"Python {env['python']}, numpy {env['numpy']}, h5py {env['h5py']}, zarr "
        f"{env['zarr']}, dask {env['dask']}. Warm page cache. Ratio: the row's figure / "
        "nest-data's (> 1: nest-data is faster or smaller).",
        "",
        "| Benchmark | Method | Scores (s) | Baseline + selection (s) | Total (s) | "
        "Peak RSS (MiB) | Time ratio | Memory ratio |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    labels = {"nest_data": "nest-data `univariate_rnc` (dask threads)",
              "rnc_columns": "RNC's code: h5py `dset[:, best_voxels]`, numpy",
              "rnc_whole": "RNC's code, each file loaded whole (`dset[:]`)"}
    for key, label in labels.items():
        r = rnc[key]
        lines.append(
            f"| Univariate RNC, {res['n_batches']:,} batches | {label} | {r['scores_s']:.2f} | "
            f"{r['baseline_s']:.2f} | {r['total_s']:.2f} | {r['peak_rss_mib']:.0f} | "
            f"{r['total_s'] / nest['total_s']:.2f} | "
            f"{r['peak_rss_mib'] / nest['peak_rss_mib']:.2f} |")
    lines += [
        "",
        "| Benchmark | Method | Time (s) | Ratio (row / nest-data) |",
        "|---|---|---:|---:|",
        f"| RSM of {rsm['images']} images x {rsm['voxels']} voxels | nest-data `rsm` "
        f"(read + scale + one product), best of {rsm['rounds']} (first run "
        f"{rsm['nest_data_first_s']:.3f} s) | {rsm['nest_data_s']:.3f} | 1.00 |",
        f"| | pairwise `scipy.stats.pearsonr` loop | {rsm['pearsonr_loop_s']:.2f} | "
        f"{rsm['pearsonr_loop_s'] / rsm['nest_data_s']:.0f} |",
        f"| | `numpy.corrcoef` on rows read with h5py, best of {rsm['rounds']} (first run "
        f"{rsm['numpy_first_s']:.3f} s) | {rsm['numpy_s']:.3f} | "
        f"{rsm['numpy_s'] / rsm['nest_data_s']:.2f} |",
        f"| RSM, the reading alone | `nest_data.select_images`: the {rsm['chunks_read']} "
        f"inner chunks ({rsm['inner_rows']} images each) holding the images, read and checked, "
        f"{rsm['nest_data_read_mb']:.0f} MB | {rsm['nest_data_read_s']:.3f} | 1.00 |",
        f"| | h5py: the {rsm['images']} rows, {rsm['h5py_read_mb']:.1f} MB, unchecked | "
        f"{rsm['h5py_read_s']:.3f} | {rsm['h5py_read_s'] / rsm['nest_data_read_s']:.2f} |",
        f"| | `da.isel(image=images)`: dask reads every shard holding an image whole | "
        f"{rsm['isel_read_s']:.3f} | {rsm['isel_read_s'] / rsm['nest_data_read_s']:.2f} |",
        f"| {sel['images']:,} random images of V1, the reading alone | "
        f"`nest_data.select_images`, in {sel['tasks']} task(s) (up to about "
        f"{sel['task_mb']:.0f} MB of inner chunks each) run side by side | "
        f"{sel['nest_data_s']:.3f} | 1.00 |",
        f"| | the same in one task | {sel['one_task_s']:.3f} | "
        f"{sel['one_task_s'] / sel['nest_data_s']:.2f} |",
        f"| | h5py: the {sel['images']:,} rows, unchecked | {sel['h5py_s']:.3f} | "
        f"{sel['h5py_s'] / sel['nest_data_s']:.2f} |",
        f"| RSM, the arithmetic alone (rows in memory) | nest-data: centre, scale to unit "
        f"length, one product | {rsm['nest_data_arithmetic_s']:.3f} | 1.00 |",
        f"| | `numpy.corrcoef` | {rsm['numpy_arithmetic_s']:.3f} | "
        f"{rsm['numpy_arithmetic_s'] / rsm['nest_data_arithmetic_s']:.2f} |",
        f"| Top {top['k']} images of sub-01 V1 ({top['mb']:.0f} MB, ncsnr > 0.5) | nest-data "
        f"`top_images` | {top['nest_data_s']:.3f} | 1.00 |",
        f"| | h5py on NED's file: blocks of rows, `np.nanmean`, `argsort` | "
        f"{top['h5py_s']:.3f} | {top['h5py_s'] / top['nest_data_s']:.2f} (the same "
        f"{top['same_images']} of {top['k']} images) |",
        f"| ROI means of {len(SUBJECTS) * len(ROIS)} entries, LocalCluster | 1 worker process "
        f"| {workers['1_workers_s']:.2f} | 1.00 |",
        f"| | 2 worker processes | {workers['2_workers_s']:.2f} | "
        f"{workers['2_workers_s'] / workers['1_workers_s']:.2f} (speed-up "
        f"{workers['1_workers_s'] / workers['2_workers_s']:.2f}x) |",
        f"| Out of core: `roi_mean` + `mean('image')` of sub-01 {BIG_ROI} "
        f"({ooc['values_gb']:.2f} GB, store {ooc['store_gb']:.2f} GB) | 2 workers, "
        f"`memory_limit={ooc['memory_limit']}` each (the data is "
        f"{ooc['values_over_limit']:.1f}x each worker's limit); worker peak RSS "
        f"{', '.join(f'{v:.0f}' for v in ooc['worker_peak_rss_mib'])} MiB | "
        f"{ooc['seconds']:.2f} | - |",
        *roi_mean_rows(res["roi_mean"]),
        "",
        f"RNC checks: ROI scores equal to RNC's way within "
        f"{max(rnc[k]['max_score_diff'] for k in ('rnc_columns', 'rnc_whole')):.1e}; "
        "images selected by both (of 25 per condition; the baselines come from different "
        "random batches): "
        + ", ".join(f"{c} {n}" for c, n in rnc["rnc_columns"]["selected_overlap"].items())
        + f". RSMs equal within {rsm['max_abs_diff']:.1e}.",
    ]
    return "\n".join(lines) + "\n"


def roi_mean_rows(rows: list[dict[str, Any]]) -> list[str]:
    """Table rows of :func:`measure_roi_mean`."""
    return [f"| `roi_mean` of sub-01 {BIG_ROI}, {r['images']:,} x {r['voxels']:,} "
            f"({r['mb']:.0f} MB), best of {r['rounds']} interleaved | nest-data `roi_mean` "
            f"({r['tasks']} tasks, dask threads) | {r['nest_data_s']:.3f} | 1.00 |\n"
            f"| | h5py, blocks of 4096 rows, NED HDF5 | {r['h5py_s']:.3f} | "
            f"{r['ratio']:.2f} (nest-data at {r['ratio']:.2f}x h5py's speed) |"
            for r in rows]


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="7,300 images instead of 73,000")
    parser.add_argument("--tmp", type=Path, default=None, help="folder for the data")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--roi-mean-only", action="store_true",
                        help="measure only roi_mean against h5py (12,000 and 26,107 images)")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    mode = "quick" if args.quick else "full"
    n_images, n_batches = N_IMAGES[mode], N_BATCHES[mode]
    env = environment()
    started = time.perf_counter()
    if args.roi_mean_only:
        with tempfile.TemporaryDirectory(prefix="nest-data-analysis-", dir=args.tmp) as tmp:
            rows = measure_roi_mean(Path(tmp), ROI_MEAN_ROWS[mode])
        stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        print(f"{stamp}; code {env['git']['commit']}; {env['cpus']} CPUs\n\n"
              "| Benchmark | Method | Time (s) | Ratio (row / nest-data) |\n|---|---|---:|---:|\n"
              + "\n".join(roi_mean_rows(rows)))
        return 0
    with tempfile.TemporaryDirectory(prefix="nest-data-analysis-", dir=args.tmp) as tmp:
        root = Path(tmp)
        dest = make_data(root, n_images, ROIS, SUBJECTS)
        source_gb = tree_bytes(root / "ned") / 1e9
        res: dict[str, Any] = {"mode": mode, "n_images": n_images, "n_batches": n_batches,
                               "environment": env, "source_gb": source_gb,
                               "timestamp": dt.datetime.now().isoformat(timespec="seconds")}
        res["rnc"] = measure_rnc(root, dest, n_images, n_batches)
        res["rsm"] = measure_rsm(root, dest, n_images, RSM_IMAGES[mode])
        res["select"] = measure_select(root, dest, n_images, SELECT_IMAGES[mode])
        res["top"] = measure_top(root, dest)
        res["roi_mean"] = measure_roi_mean(root, ROI_MEAN_ROWS[mode])
        res["workers"] = measure_workers(dest)
        shutil.rmtree(root / "ned")  # keep the disk use down before the big store
        res["out_of_core"] = measure_out_of_core(root, n_images)
    res["total_s"] = time.perf_counter() - started
    table = markdown(res)
    md_path, json_path = write_results(res, table, args.out, "analysis")
    print(table)
    logger.info("wrote %s and %s (total %.0f s)", md_path, json_path, res["total_s"])
    return 0


if __name__ == "__main__":
    os.environ.setdefault("NEST_DATA_PROGRESS", "1")
    sys.exit(main())
