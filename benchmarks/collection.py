"""Whole-collection analyses on ``dask.distributed``, measured as the collection grows.

Usage::

    python benchmarks/collection.py            # 73,000 nsd images, 8 subjects x 23 ROIs
    python benchmarks/collection.py --quick    # 7,300 images, voxels / 64, HTTP at 1x only

Data: NED's files for the ``nsd`` image set, every subject (1-8) and every ROI of the fwRF
model (23, with sub-01's published voxel counts and the fixed variations of
:func:`nest_data.synthetic.roi_voxel_count` for the others), written with
:func:`nest_data.synthetic.write_ned` and converted with :func:`nest_data.converters.convert_ned`
(the project's one writer).  **Voxels are subsampled**: every ROI keeps 1 voxel in
``--voxel-divisor`` (32 by default, 3 GB: the whole collection would be 98 GB of float32,
more than this machine's free disk, and writing it through NED's files and the converter
runs at about 7 MB/s on the 2-core machine).  Image
counts and entry counts are the real ones.

Sizes: 1x is subjects 1-2 (46 entries), 2x subjects 1-4 (92), 4x all 8 (184), so entries
and bytes both grow 4-fold.  For each size and each source (the local folder, and the same
folder over HTTP from the test suite's server with ``--latency`` added to every request,
Range honoured), on a fresh ``LocalCluster`` (``--workers`` processes of ``--threads``
threads, 1 by default, or ``--http-threads``, 4, for HTTP, whose tasks mostly wait on
requests; ``--memory-limit`` each):

1. ``open_many`` of the entries, and building the ``roi_means`` graph (tasks, seconds);
2. ``roi_means`` of every entry; ``top_images`` of every ROI (its subjects averaged);
   ``univariate_rnc`` of V1 and FFA-1 over every subject (``--batches`` random batches);
3. bytes read (local: the shard files the analyses read; HTTP: what the server sent) and
   throughput against a raw read of the same shard objects on the same workers in the same
   run (plain ``readinto``, or HTTP GETs, 8 at once per task), done before and after the
   analysis (the faster counts);
4. each worker's peak RSS from its own memory monitor, spilled bytes and restarted workers.

Results (Markdown table and JSON) go to ``benchmarks/results/``; the data is removed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from run import environment, exit_on_sigterm, tree_bytes, write_results

import nest_data
from nest_data.converters import convert_ned
from nest_data.synthetic import ROI_VOXELS_SUB01, roi_voxel_count, write_ned

logger = logging.getLogger("nest_data.benchmarks")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from tests.servers import HTTPServer  # noqa: E402

IMAGESET = "nsd"
ROIS = list(ROI_VOXELS_SUB01)
SIZES = {"1x": [1, 2], "2x": [1, 2, 3, 4], "4x": list(range(1, 9))}
N_IMAGES = {"full": 73000, "quick": 7300}
RNC_ROIS = ("V1", "FFA-1")
RESULTS_DIR = Path(__file__).resolve().parent / "results"


# ---------------------------------------------------------------------------- data


def voxel_counts(subject: int, divisor: int) -> dict[str, int]:
    """Every ROI's voxel count for ``subject``, keeping 1 voxel in ``divisor``."""
    return {roi: max(8, round(roi_voxel_count(subject, roi) / divisor)) for roi in ROIS}


def make_collection(ned: Path, dest: Path, n_images: int, divisor: int) -> dict[str, Any]:
    """Write NED's files subject by subject and convert each into ``dest``."""
    start = time.perf_counter()
    for subject in SIZES["4x"]:
        write_ned(ned, modalities=["fmri"], subjects=[subject], imagesets=[IMAGESET],
                  n_images=n_images, n_voxels=voxel_counts(subject, divisor), workers=2,
                  show_progress=False)
        convert_ned(ned, dest, workers=2, show_progress=False)
        shutil.rmtree(ned)
        logger.info("sub-%02d written and converted (%.0f s so far)", subject,
                    time.perf_counter() - start)
    return {"seconds": time.perf_counter() - start, "store_gb": tree_bytes(dest) / 1e9}


def shard_files(root: Path, subjects: Sequence[int], rois: Sequence[str]) -> list[Path]:
    """The shard objects of ``responses`` of the entries of ``subjects`` x ``rois``."""
    cat = nest_data.catalog()
    files: list[Path] = []
    for s in subjects:
        for r in rois:
            path = root / cat.resolve(imageset=IMAGESET, subject=s, roi=r).path
            files += sorted(p for p in (path / "responses" / "c").rglob("*") if p.is_file())
    return files


# ---------------------------------------------------------------------------- workers


def _read_files(paths: list[str]) -> int:
    """Read whole files into one reused buffer (the raw-disk baseline); return the bytes."""
    buf = bytearray(16 * 2**20)
    total = 0
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                total += n
    return total


def _get_urls(urls: list[str]) -> int:
    """GET every URL, all at once (the raw-network baseline); return the bytes."""
    import urllib.request

    def get(url: str) -> int:
        with urllib.request.urlopen(url, timeout=120) as response:
            return len(response.read())

    with ThreadPoolExecutor(len(urls)) as pool:
        return sum(pool.map(get, urls))


def _worker_memory(dask_worker: Any) -> dict[str, float]:
    """Peak RSS from the worker's own monitor (sampled every 500 ms) and spilled bytes."""
    data = dask_worker.data
    spilled = getattr(data, "spilled_total", None)
    spilled_bytes = 0.0
    if spilled is not None:
        spilled_bytes = float(getattr(spilled, "disk", 0) or 0)
    return {"peak_rss_mib": max(dask_worker.monitor.quantities["memory"]) / 2**20,
            "spilled_mib": spilled_bytes / 2**20}


# ---------------------------------------------------------------------------- one run


def entries_by_roi(tree: xr.DataTree) -> dict[str, list[xr.DataArray]]:
    """The entries of an ``open_many`` tree, grouped by ROI (in :data:`ROIS` order)."""
    out: dict[str, list[xr.DataArray]] = {r: [] for r in ROIS}
    for node in tree.subtree:
        if "responses" in node.data_vars:
            da = node["responses"]
            out[str(da.attrs["roi"])].append(da)
    return out


def timed(func: Callable[[], Any]) -> tuple[float, Any]:
    """Seconds ``func()`` took, and what it returned."""
    start = time.perf_counter()
    result = func()
    return time.perf_counter() - start, result


def measure(location: str, root: Path, subjects: list[int], args: argparse.Namespace,
            server: HTTPServer | None) -> dict[str, Any]:
    """Open, build and run the three analyses over ``subjects`` x every ROI on a fresh
    LocalCluster; raw reads of the same shards on the same workers as the baseline."""
    from distributed import Client, LocalCluster

    n_entries = len(subjects) * len(ROIS)
    res: dict[str, Any] = {"subjects": subjects, "entries": n_entries,
                           "source": "local" if server is None else "http"}
    threads = args.threads if server is None else args.http_threads
    res["threads_per_worker"] = threads
    with LocalCluster(n_workers=args.workers, threads_per_worker=threads, processes=True,
                      host="127.0.0.1", dashboard_address=None,
                      memory_limit=args.memory_limit) as cluster, Client(cluster) as client:
        workers_before = set(client.scheduler_info()["workers"])
        rss_start = client.run(lambda dask_worker: dask_worker.monitor.proc.memory_info().rss)

        def served() -> tuple[int, int]:
            if server is None:
                return 0, 0
            reqs = server.requests
            return len(reqs), sum(r.bytes_sent for r in reqs)

        if server is not None:
            server.reset()
        res["open_s"], tree = timed(lambda: nest_data.open_many(
            imageset=IMAGESET, subject=subjects, roi=ROIS, location=location))
        res["open_requests"] = served()[0]
        by_roi = entries_by_roi(tree)
        everything = [da for das in by_roi.values() for da in das]
        res["graph_s"], means = timed(lambda: nest_data.roi_means(everything))
        res["tasks"] = len(means.__dask_graph__())
        top_graph_s, top_tasks = 0.0, 0
        for das in by_roi.values():
            seconds, graph = timed(lambda das=das: nest_data.roi_means(das))
            top_graph_s += seconds
            top_tasks += len(graph.__dask_graph__())
        res["top_graph_s"], res["top_tasks"] = top_graph_s, top_tasks

        runs: dict[str, Callable[[], Any]] = {
            "roi_means": lambda: means.compute(),
            "top_images": lambda: {r: nest_data.top_images(das, k=10, show_progress=False)
                                   for r, das in by_roi.items()},
            "univariate_rnc": lambda: nest_data.univariate_rnc(
                by_roi[RNC_ROIS[0]] + by_roi[RNC_ROIS[1]], rois=RNC_ROIS,
                n_batches=args.batches, show_progress=False),
        }
        read_rois = {"roi_means": ROIS, "top_images": ROIS, "univariate_rnc": list(RNC_ROIS)}
        for name, run in runs.items():
            files = shard_files(root, subjects, read_rois[name])
            # the raw read before the analysis (it then finds the files in the page cache
            # as the raw read did) and after; the faster counts
            raw_s = raw_read(client, files, root, server)
            if server is not None:
                server.reset()
            seconds, out = timed(run)
            requests, sent = served()
            nbytes = sent if server is not None else sum(p.stat().st_size for p in files)
            raw_s = min(raw_s, raw_read(client, files, root, server))
            res[name] = {"seconds": seconds, "bytes": nbytes, "requests": requests,
                         "raw_s": raw_s, "raw_bytes": sum(p.stat().st_size for p in files)}
            if name == "roi_means":
                res["roi_means_finite"] = bool(np.isfinite(out.values).all())
            logger.info("%s %s %d entries: %s %.2f s, %.2f GB (raw read %.2f s)",
                        res["source"], "+".join(map(str, subjects)), n_entries, name, seconds,
                        nbytes / 1e9, raw_s)
        memory = client.run(_worker_memory)
        res["worker_start_rss_mib"] = [v / 2**20 for v in rss_start.values()]
        res["worker_peak_rss_mib"] = [m["peak_rss_mib"] for m in memory.values()]
        res["spilled_mib"] = sum(m["spilled_mib"] for m in memory.values())
        res["restarted_workers"] = len(workers_before - set(client.scheduler_info()["workers"]))
    return res


def raw_read(client: Any, files: list[Path], root: Path, server: HTTPServer | None) -> float:
    """Seconds to read ``files`` whole on the cluster's workers: 8 files per task (as
    nest-data's remote tasks hold 8 shards), plain reads or all of a task's GETs at once."""
    groups = [files[i:i + 8] for i in range(0, len(files), 8)]
    if server is None:
        work: list[list[str]] = [[str(p) for p in g] for g in groups]
        func: Callable[[list[str]], int] = _read_files
    else:
        work = [[f"{server.url}/{p.relative_to(root).as_posix()}" for p in g] for g in groups]
        func = _get_urls
    start = time.perf_counter()
    got = sum(client.gather(client.map(func, work, pure=False)))
    seconds = time.perf_counter() - start
    expected = sum(p.stat().st_size for p in files)
    if got != expected:
        raise RuntimeError(f"raw read got {got} bytes of {expected}")
    return seconds


# ---------------------------------------------------------------------------- report


def markdown(res: dict[str, Any]) -> str:
    """The results as a Markdown section."""
    env = res["environment"]
    lines = [
        f"## Whole-collection analyses ({res['mode']}): nsd, {res['n_images']:,} images, "
        f"23 ROIs, voxels / {res['voxel_divisor']}",
        "",
        f"{res['timestamp']} UTC on {res['machine']}; code {env['git']['commit']}"
        f"{' + uncommitted changes' if env['git']['changed'] else ''}; LocalCluster of "
        f"{res['workers']} worker processes (threads each: {res['threads']} local, "
        f"{res['http_threads']} HTTP), memory_limit {res['memory_limit']} each; HTTP: the "
        f"test server with {res['latency'] * 1000:.0f} ms added to every request. Store "
        f"{res['data']['store_gb']:.2f} GB for all 184 entries. "
        f"Throughput ratio: raw read of the same shards on the same workers / the analysis "
        f"(1.00 = as fast as reading the bytes).",
        "",
        "| source | size | entries | GB read | open (s) | graph: tasks, s | roi_means s "
        "(GB/s, x raw) | top_images x23 s (x raw) | univariate_rnc s (x raw) | peak RSS per "
        "worker MiB (start) | spill, restarts |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in res["runs"]:
        rm, top, rnc = row["roi_means"], row["top_images"], row["univariate_rnc"]
        lines.append(
            f"| {row['source']} | {row['size']} | {row['entries']} | {rm['bytes'] / 1e9:.2f} | "
            f"{row['open_s']:.2f} | {row['tasks']:,}, {row['graph_s']:.3f} | "
            f"{rm['seconds']:.2f} ({rm['bytes'] / rm['seconds'] / 1e9:.2f}, "
            f"{rm['raw_s'] / rm['seconds']:.2f}) | {top['seconds']:.2f} "
            f"({top['raw_s'] / top['seconds']:.2f}) | {rnc['seconds']:.2f} "
            f"({rnc['raw_s'] / rnc['seconds']:.2f}) | "
            f"{', '.join(f'{v:.0f}' for v in row['worker_peak_rss_mib'])} "
            f"({', '.join(f'{v:.0f}' for v in row['worker_start_rss_mib'])}) | "
            f"{row['spilled_mib']:.0f} MiB, {row['restarted_workers']} |")
    lines += ["", "Fixed cost per entry (4x size vs 1x: the slope between the two):", "",
              "| source | open ms/entry | roi_means graph ms/entry | tasks/entry | roi_means "
              "s/entry beyond the raw read |", "|---|---:|---:|---:|---:|"]
    for source in ("local", "http"):
        rows = {r["size"]: r for r in res["runs"] if r["source"] == source}
        if "1x" not in rows or "4x" not in rows:
            continue
        a, b = rows["1x"], rows["4x"]
        d = b["entries"] - a["entries"]

        def slope(key: Callable[[dict[str, Any]], float]) -> float:
            return (key(b) - key(a)) / d  # noqa: B023

        lines.append(
            f"| {source} | {1000 * slope(lambda r: r['open_s']):.1f} | "
            f"{1000 * slope(lambda r: r['graph_s']):.2f} | "
            f"{slope(lambda r: r['tasks']):.1f} | "
            f"{slope(lambda r: r['roi_means']['seconds'] - r['roi_means']['raw_s']):.4f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="7,300 images, 1 voxel in 64; HTTP at 1x only")
    parser.add_argument("--voxel-divisor", type=int, default=None,
                        help="keep 1 voxel in N of every ROI (default: 32; quick: 64)")
    parser.add_argument("--latency", type=float, default=0.03)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1,
                        help="threads per worker reading the local folder")
    parser.add_argument("--http-threads", type=int, default=4,
                        help="threads per worker reading over HTTP (tasks wait on requests)")
    parser.add_argument("--memory-limit", default="1GiB")
    parser.add_argument("--batches", type=int, default=None,
                        help="univariate_rnc's random batches (default 1,000,000; quick 10,000)")
    parser.add_argument("--sizes", nargs="*", default=None, choices=list(SIZES))
    parser.add_argument("--sources", nargs="*", default=["local", "http"],
                        choices=["local", "http"])
    parser.add_argument("--tmp", type=Path, default=None, help="folder for the data")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    exit_on_sigterm()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("distributed").setLevel(logging.WARNING)
    os.environ["NEST_DATA_PROGRESS"] = "0"
    mode = "quick" if args.quick else "full"
    args.voxel_divisor = args.voxel_divisor or (64 if args.quick else 32)
    args.batches = args.batches or (10_000 if args.quick else 1_000_000)
    sizes = args.sizes or (["1x", "4x"] if args.quick else list(SIZES))
    plan = [(size, source) for size in sizes for source in args.sources
            if not (args.quick and source == "http" and size != sizes[0])]
    n_images = N_IMAGES[mode]
    if args.tmp is not None:
        tempfile.tempdir = str(args.tmp)  # the HTTP server's folder too
    res: dict[str, Any] = {
        "mode": mode, "n_images": n_images, "voxel_divisor": args.voxel_divisor,
        "latency": args.latency, "workers": args.workers, "memory_limit": args.memory_limit,
        "threads": args.threads, "http_threads": args.http_threads,
        "batches": args.batches, "environment": environment(),
        "machine": f"{platform.node()}: {os.cpu_count()}-core CPU VM, "
                   f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "runs": []}
    started = time.perf_counter()
    with HTTPServer() as server, tempfile.TemporaryDirectory(prefix="nest-ned-") as ned:
        root = server.directory  # served over HTTP, and read as a local folder
        res["data"] = make_collection(Path(ned) / "ned", root, n_images, args.voxel_divisor)
        for size, source in plan:
            server.latency = args.latency if source == "http" else 0.0
            location = server.url if source == "http" else str(root)
            row = measure(location, root, SIZES[size], args,
                          server if source == "http" else None)
            row["size"] = size
            res["runs"].append(row)
        server.latency = 0.0
    res["total_s"] = time.perf_counter() - started
    table = markdown(res)
    md_path, json_path = write_results(res, table, args.out, "collection")
    print(table)
    logger.info("wrote %s and %s (total %.0f s)", md_path, json_path, res["total_s"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
