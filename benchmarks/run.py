"""Single-command benchmark of nest-data against NED's own HDF5 files and a raw memmap.

Usage::

    python benchmarks/run.py            # realistic size: 26107 x 7799 float32 (814 MB)
    python benchmarks/run.py --quick    # 4000 images, finishes in well under a minute
    python benchmarks/run.py --all      # then analysis, remote, codecs, layout, collection, opening

Everything is measured in one run, and every figure that matters is reported as a ratio
against a baseline measured in the same run, because benchmark machines are noisy:

1. conversion (``convert_ned``) wall time, MB/s and peak memory (in a subprocess, against a
   subprocess that only imports the same modules);
2. full-scan throughput (mean over voxels for every image) through nest-data, through h5py
   on NED's contiguous HDF5, and through a numpy memmap of the raw bytes (the ceiling);
3. open latency of ``nest_data.open`` against opening the HDF5 dataset with h5py;
4. size on disk of the Zarr store against the HDF5 source.

The data are written by :func:`nest_data.synthetic.write_ned` (NED's exact file format with
synthetic values) into a temporary folder that is removed at the end.  A Markdown table is
printed and written, with the raw measurements as JSON, to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import dask.array
import h5py
import numpy as np
import xarray as xr
import zarr

import nest_data
import nest_data._shards
from nest_data.synthetic import ned_file_paths, write_ned

logger = logging.getLogger("nest_data.benchmarks")

IMAGESET = "things"
SUBJECT = 1
ROI = "lateral"
DATASET = "synthetic_neural_responses"
N_IMAGES_FULL = 26107
N_IMAGES_QUICK = 4000
H5_BLOCK_ROWS = 4096
SCAN_REPEATS = 5
OPEN_REPEATS = 20
RTOL = 1e-5
RESULTS_DIR = Path(__file__).resolve().parent / "results"

#: Modules imported by both the conversion subprocess and its import-only baseline.
_IMPORTS = "import nest_data, nest_data.converters.ned, h5py, zarr, xarray\n"

#: Runs ``argv[1]`` as a Python program in a child process, then prints JSON with the
#: child's stdout and its peak RSS.  Measuring inside a fresh wrapper isolates each child:
#: ``RUSAGE_CHILDREN`` is a maximum over *all* children a process ever waited for.
_RSS_WRAPPER = """\
import json, resource, subprocess, sys
proc = subprocess.run([sys.executable, "-c", *sys.argv[1:]], capture_output=True, text=True)
if proc.returncode:
    sys.stderr.write(proc.stderr)
    sys.exit(proc.returncode)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"stdout": proc.stdout, "maxrss_kib": peak}))
"""

_CONVERT_CODE = _IMPORTS + """\
import json, sys, time
from nest_data.converters import convert_ned
start = time.perf_counter()
report = convert_ned(sys.argv[1], sys.argv[2], workers=1, show_progress=False)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "converted": report.converted}))
"""


@dataclass
class Timing:
    """Repeated wall-clock timings of one operation, in seconds."""

    seconds: list[float] = field(default_factory=list)

    @property
    def best(self) -> float:
        """Fastest of the repeats."""
        return min(self.seconds)

    @property
    def median(self) -> float:
        """Median of the repeats."""
        return statistics.median(self.seconds)


@dataclass
class ScanResult:
    """A full-scan method: label, role in the comparison, timings and throughput."""

    key: str
    label: str
    role: str
    timing: Timing
    nbytes: int

    @property
    def gb_per_s(self) -> float:
        """Uncompressed bytes scanned per second (best of the repeats), in GB/s."""
        return self.nbytes / self.timing.best / 1e9


# ---------------------------------------------------------------------------- helpers


def time_repeats(func: Callable[[], Any], repeats: int) -> tuple[Timing, Any]:
    """Call ``func`` ``repeats`` times and time each call.

    Parameters
    ----------
    func : callable
        The operation, taking no arguments.
    repeats : int
        Number of calls.

    Returns
    -------
    timing : Timing
        Wall-clock time of every call.
    result : object
        What the last call returned.
    """
    timing = Timing()
    result: Any = None
    for _ in range(repeats):
        start = time.perf_counter()
        result = func()
        timing.seconds.append(time.perf_counter() - start)
    return timing, result


def time_interleaved(ways: dict[str, Callable[[], Any]], rounds: int
                     ) -> dict[str, list[float]]:
    """Time every way once per round, the ways interleaved, so that all run warm and share
    whatever the machine is doing.

    Parameters
    ----------
    ways : dict of str to callable
        The operations, taking no arguments, by name.
    rounds : int
        Number of rounds.

    Returns
    -------
    dict of str to list of float
        Wall-clock seconds of every call, by name, in round order.
    """
    times: dict[str, list[float]] = {key: [] for key in ways}
    for _ in range(rounds):
        for key, way in ways.items():
            start = time.perf_counter()
            way()
            times[key].append(time.perf_counter() - start)
    return times


def exit_on_sigterm() -> None:
    """Turn SIGTERM (``timeout``, a killed job) into a normal exit.

    The benchmarks write gigabytes into temporary directories; a normal exit runs their
    clean-up, where the default SIGTERM handler would leave them on disk.
    """
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def tree_bytes(path: Path) -> int:
    """Sum of the sizes of all files under ``path`` (apparent sizes, not blocks)."""
    return sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file())


def run_with_peak_rss(code: str, *args: str) -> tuple[str, int]:
    """Run ``python -c code *args`` in a subprocess and measure its peak RSS.

    Parameters
    ----------
    code : str
        Python source run by the child.
    *args : str
        Extra command-line arguments (``sys.argv[1:]`` in the child).

    Returns
    -------
    stdout : str
        What the child printed.
    maxrss_kib : int
        ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` read after the child ended (KiB on Linux).

    Raises
    ------
    RuntimeError
        The child failed; its stderr is in the message.
    """
    proc = subprocess.run([sys.executable, "-c", _RSS_WRAPPER, code, *args],
                          capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"benchmark subprocess failed ({proc.returncode}):\n{proc.stderr}")
    out = json.loads(proc.stdout)
    return out["stdout"], int(out["maxrss_kib"])


# ---------------------------------------------------------------------------- stages


def make_source(root: Path, n_images: int) -> Path:
    """Write a miniature NED folder with one fMRI entry and return its ``.h5`` path.

    Parameters
    ----------
    root : pathlib.Path
        Folder to write into.
    n_images : int
        Images (rows) of the ``things`` / sub-01 / ``lateral`` entry (7799 voxels).

    Returns
    -------
    pathlib.Path
        The HDF5 file holding ``synthetic_neural_responses``.
    """
    start = time.perf_counter()
    write_ned(root, modalities=["fmri"], subjects=[SUBJECT], rois=[ROI],
              imagesets=[IMAGESET], n_images=n_images, show_progress=False)
    h5_path, _ = ned_file_paths(root, "fmri", IMAGESET, SUBJECT, ROI)
    logger.info("wrote NED source %s (%.1f MB) in %.1f s", h5_path.name,
                h5_path.stat().st_size / 1e6, time.perf_counter() - start)
    return h5_path


def measure_conversion(src: Path, dest: Path, source_bytes: int) -> dict[str, Any]:
    """Convert ``src`` into ``dest`` in a subprocess; time it and measure its peak memory.

    Parameters
    ----------
    src : pathlib.Path
        The NED folder (parent of ``pregenerated_insilico_neural_responses``).
    dest : pathlib.Path
        Root of the Zarr collection to write.
    source_bytes : int
        Size of the source ``.h5`` file, for MB/s.

    Returns
    -------
    dict
        ``seconds``, ``mb_per_s``, ``peak_rss_mib``, ``import_rss_mib``,
        ``peak_minus_imports_mib``, ``source_mb``.
    """
    _, import_kib = run_with_peak_rss(_IMPORTS)
    stdout, peak_kib = run_with_peak_rss(_CONVERT_CODE, str(src), str(dest))
    child = json.loads(stdout.strip().splitlines()[-1])
    if len(child["converted"]) != 1:
        raise RuntimeError(f"expected one converted entry, got {child}")
    seconds = float(child["seconds"])
    result = {
        "seconds": seconds,
        "mb_per_s": source_bytes / seconds / 1e6,
        "peak_rss_mib": peak_kib / 1024,
        "import_rss_mib": import_kib / 1024,
        "peak_minus_imports_mib": (peak_kib - import_kib) / 1024,
        "source_mb": source_bytes / 1e6,
    }
    logger.info("converted in %.2f s (%.0f MB/s), peak RSS %.0f MiB (%.0f MiB over imports)",
                seconds, result["mb_per_s"], result["peak_rss_mib"],
                result["peak_minus_imports_mib"])
    return result


def open_entry(dest: Path, chunks: dict[str, int] | None = None) -> xr.DataArray:
    """Open the benchmark entry of the converted collection with :func:`nest_data.open`."""
    return nest_data.open(imageset=IMAGESET, subject=SUBJECT, roi=ROI, location=str(dest),
                          chunks=chunks)


def scan_nest_data(da: xr.DataArray, *, skipna: bool | None = None) -> np.ndarray:
    """Mean over voxels of every image through xarray + dask (default threaded scheduler)."""
    return np.asarray(da.mean("voxel", skipna=skipna).compute().values)


def scan_h5py_blocks(h5_path: Path, block_rows: int = H5_BLOCK_ROWS) -> np.ndarray:
    """Mean over voxels of every image, reading NED's HDF5 ``block_rows`` rows at a time."""
    with h5py.File(h5_path, "r") as f:
        dset = f[DATASET]
        out = np.empty(dset.shape[0], dtype=dset.dtype)
        for start in range(0, dset.shape[0], block_rows):
            out[start:start + block_rows] = dset[start:start + block_rows].mean(axis=1)
    return out


def scan_h5py_whole(h5_path: Path) -> np.ndarray:
    """Mean over voxels of every image after reading the whole dataset (``f[ds][:]``)."""
    with h5py.File(h5_path, "r") as f:
        return np.asarray(f[DATASET][:].mean(axis=1))


def scan_memmap(raw_path: Path, shape: tuple[int, int]) -> np.ndarray:
    """Mean over voxels of every image from a numpy memmap of the raw float32 bytes."""
    return np.asarray(np.memmap(raw_path, dtype=np.float32, mode="r", shape=shape).mean(axis=1))


def write_raw(h5_path: Path, raw_path: Path) -> tuple[int, int]:
    """Write the HDF5 dataset's values as raw float32 bytes (``tofile``); return its shape."""
    with h5py.File(h5_path, "r") as f:
        values = f[DATASET][:]
    values.tofile(raw_path)
    return (int(values.shape[0]), int(values.shape[1]))


def measure_scans(h5_path: Path, dest: Path, raw_path: Path,
                  shape: tuple[int, int]) -> list[ScanResult]:
    """Time every full-scan method (best of :data:`SCAN_REPEATS`) and check they agree.

    Parameters
    ----------
    h5_path : pathlib.Path
        NED's HDF5 file.
    dest : pathlib.Path
        Root of the converted collection.
    raw_path : pathlib.Path
        The raw float32 file for the memmap.
    shape : tuple of int
        ``(n_images, n_voxels)``.

    Returns
    -------
    list of ScanResult
        In table order; the first is nest-data's default path.

    Raises
    ------
    AssertionError
        Some method's means differ from the memmap's (``np.allclose``, ``rtol=1e-5``).
    """
    da = open_entry(dest)
    nbytes = shape[0] * shape[1] * 4

    def synchronous() -> np.ndarray:
        with dask.config.set(scheduler="synchronous"):
            return scan_nest_data(da)

    def roi_mean_unchecked() -> np.ndarray:
        # What the always-on CRC-32C check costs: the same scan with the check skipped
        # (only here; the library has no switch for it).
        shards = nest_data._shards
        checked = shards.crc_failures
        shards.crc_failures = lambda data, starts, lengths: []
        try:
            return np.asarray(nest_data.roi_mean(da).compute().values)
        finally:
            shards.crc_failures = checked

    # xarray's default mean of floats skips NaN: dask's nanmean, whose per-chunk NumPy work
    # (nansum copies the chunk, then counts non-NaN) bounds any store; measured here on the
    # values already in memory, in the store's chunks
    in_memory = xr.DataArray(dask.array.from_array(np.fromfile(raw_path, "<f4").reshape(shape),
                                                   chunks=da.chunks),
                             dims=da.dims)

    methods: list[tuple[str, str, str, Callable[[], np.ndarray]]] = [
        ("nest_data", "nest-data `da.mean('voxel')` (dask threads)", "subject",
         lambda: scan_nest_data(da)),
        ("nest_data_skipna_false", "nest-data `da.mean('voxel', skipna=False)`", "diagnostic",
         lambda: scan_nest_data(da, skipna=False)),
        ("nest_data_roi_mean", "nest-data `nest_data.roi_mean(da)` (dask threads)",
         "subject", lambda: np.asarray(nest_data.roi_mean(da).compute().values)),
        ("nest_data_roi_means", "nest-data `nest_data.roi_means([da])` (dask threads)",
         "subject", lambda: np.asarray(nest_data.roi_means([da]).compute().values[0, 0])),
        ("nest_data_roi_mean_no_crc", "nest-data `roi_mean`, CRC-32C check skipped (cost of "
         "the check)", "diagnostic", roi_mean_unchecked),
        ("nest_data_synchronous", "nest-data, dask synchronous scheduler (1 thread)",
         "diagnostic", synchronous),
        ("h5py_blocks", f"h5py, blocks of {H5_BLOCK_ROWS} rows, NED HDF5", "baseline",
         lambda: scan_h5py_blocks(h5_path)),
        ("h5py_whole", "h5py, naive `f[ds][:]` then mean", "reference",
         lambda: scan_h5py_whole(h5_path)),
        ("memmap", "numpy memmap of raw float32", "ceiling",
         lambda: scan_memmap(raw_path, shape)),
        ("in_memory_skipna", "`da.mean('voxel')` of the values already in memory (dask "
         "nanmean; no reads)", "ceiling", lambda: scan_nest_data(in_memory)),
    ]
    results: list[ScanResult] = []
    values: dict[str, np.ndarray] = {}
    for key, label, role, func in methods:
        timing, out = time_repeats(func, SCAN_REPEATS)
        values[key] = out
        results.append(ScanResult(key, label, role, timing, nbytes))
        logger.info("scan %-24s best %.3f s (%s)", key, timing.best,
                    ", ".join(f"{s:.3f}" for s in timing.seconds))
    check_agreement(values, reference="memmap")
    return results


def check_agreement(values: dict[str, np.ndarray], reference: str) -> None:
    """Fail loudly unless every result equals ``values[reference]`` within ``rtol=1e-5``.

    Raises
    ------
    AssertionError
        Names the method, the shapes and the largest difference.
    """
    ref = values[reference]
    atol = RTOL * float(np.abs(ref).max())  # means near 0 differ by float32 rounding
    for key, got in values.items():
        if got.shape != ref.shape or not np.allclose(got, ref, rtol=RTOL, atol=atol):
            diff = (float(np.max(np.abs(got.astype(np.float64) - ref)))
                    if got.shape == ref.shape else float("nan"))
            raise AssertionError(
                f"full-scan results disagree: {key} {got.shape} vs {reference} {ref.shape}, "
                f"max |difference| {diff:.3g} (rtol {RTOL})")
    logger.info("all %d full-scan results agree (rtol %g)", len(values), RTOL)


_SCAN_MEMORY_CODE = """\
import json, sys
import nest_data

def kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

da = nest_data.open(imageset=sys.argv[2], subject=int(sys.argv[3]), roi=sys.argv[4],
                    location=sys.argv[1])
before = kib("VmRSS")
with open("/proc/self/clear_refs", "w") as f:  # resets the peak (VmHWM) to the current RSS
    f.write("5")
if sys.argv[5] == "roi_mean":
    nest_data.roi_mean(da).values
else:
    da.mean("voxel", skipna=False).values
print(json.dumps({"mib": (kib("VmHWM") - before) / 1024}))
"""


def measure_scan_memory(dest: Path) -> dict[str, float]:
    """Peak memory a full scan adds over the opened entry, in a fresh process (Linux).

    Returns
    -------
    dict
        ``roi_mean_mib`` and ``mean_mib``: peak RSS during the scan minus RSS after ``open``.
    """
    out = {}
    for kind in ("roi_mean", "mean"):
        proc = subprocess.run([sys.executable, "-c", _SCAN_MEMORY_CODE, str(dest), IMAGESET,
                               str(SUBJECT), ROI, kind], capture_output=True, text=True,
                              check=True)
        out[f"{kind}_mib"] = float(json.loads(proc.stdout)["mib"])
    logger.info("scan peak memory over open: roi_mean %.0f MiB, mean %.0f MiB",
                out["roi_mean_mib"], out["mean_mib"])
    return out


def measure_open(h5_path: Path, dest: Path) -> dict[str, Timing]:
    """Median open latency of :func:`nest_data.open` and of h5py (file + dataset).

    Parameters
    ----------
    h5_path : pathlib.Path
        NED's HDF5 file.
    dest : pathlib.Path
        Root of the converted collection.

    Returns
    -------
    dict
        ``nest_data`` and ``h5py`` timings of :data:`OPEN_REPEATS` calls each.
    """
    open_entry(dest)  # first call loads the catalog; not what is measured

    def h5_open() -> None:
        f = h5py.File(h5_path, "r")
        try:
            f[DATASET]
        finally:
            f.close()

    def open_and_decode() -> None:
        da = open_entry(dest)
        for name in da.coords:
            np.asarray(da[name].values)

    nest_timing, _ = time_repeats(lambda: open_entry(dest), OPEN_REPEATS)
    labels_timing, _ = time_repeats(open_and_decode, OPEN_REPEATS)
    h5_timing, _ = time_repeats(h5_open, OPEN_REPEATS)
    logger.info("open: nest-data median %.1f ms (%.1f ms with every label decoded), h5py "
                "median %.2f ms", nest_timing.median * 1e3, labels_timing.median * 1e3,
                h5_timing.median * 1e3)
    return {"nest_data": nest_timing, "nest_data_labels": labels_timing, "h5py": h5_timing}


# ---------------------------------------------------------------------------- report


def git_state() -> dict[str, Any]:
    """Commit and uncommitted changes of the checkout that was benchmarked.

    Other people may be editing the package while the benchmark runs, so the JSON records
    exactly which code was measured.
    """
    repo = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                              check=False)
        return proc.stdout if proc.returncode == 0 else ""

    # Porcelain lines are "XY path": the leading status columns may be spaces.
    changed = [line[3:] for line in git("status", "--porcelain").splitlines()
               if line[3:] and not line[3:].startswith("benchmarks/")]
    return {"commit": git("rev-parse", "--short", "HEAD").strip() or "unknown",
            "changed": changed}


def environment() -> dict[str, Any]:
    """Versions and machine facts recorded with the results."""
    return {
        "git": git_state(),
        "loadavg_1min_start": os.getloadavg()[0],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "nest_data": getattr(nest_data, "__version__", "?"),
        "numpy": np.__version__,
        "h5py": h5py.__version__,
        "zarr": zarr.__version__,
        "xarray": xr.__version__,
        "dask": dask.__version__,
    }


def markdown_table(res: dict[str, Any]) -> str:
    """Render the results as a Markdown section with one table.

    Parameters
    ----------
    res : dict
        The raw results assembled by :func:`main`.

    Returns
    -------
    str
    """
    conv = res["conversion"]
    scans = {s["key"]: s for s in res["scans"]}
    baseline = scans["h5py_blocks"]
    opens = res["open"]
    size = res["size"]
    n_img, n_vox = res["shape"]
    env = res["environment"]

    def scan_row(s: dict[str, Any]) -> str:
        ratio = s["gb_per_s"] / baseline["gb_per_s"]
        return (f"| Full scan ({s['role']}) | {s['label']} | {s['best_s']:.3f} s | "
                f"{s['gb_per_s']:.2f} GB/s | {ratio:.2f}x |")

    open_ratio = opens["nest_data"]["median_s"] / opens["h5py"]["median_s"]
    lines = [
        f"## nest-data benchmark ({res['mode']}): fmri/{IMAGESET} sub-{SUBJECT:02d} {ROI}, "
        f"{n_img} x {n_vox} float32 ({res['nbytes'] / 1e6:.1f} MB)",
        "",
        f"{res['timestamp']}; code {env['git']['commit']}"
        f"{' + uncommitted changes' if env['git']['changed'] else ''}; {env['cpus']} CPUs "
        f"(1-min load {env['loadavg_1min_start']:.2f} at start, {res['loadavg_1min_end']:.2f}"
        f" at end); Python {env['python']}, numpy "
        f"{env['numpy']}, h5py {env['h5py']}, zarr {env['zarr']}, xarray {env['xarray']}, "
        f"dask {env['dask']}. Full scans: mean over voxels of every image, best of "
        f"{SCAN_REPEATS}, warm page cache (all files were just written). Throughput = "
        "uncompressed bytes / time. Ratio column: full scans, throughput / h5py's (> 1 is "
        "faster than NED's HDF5); open, nest-data's time / this row's; size, bytes / the "
        "HDF5 file's.",
        "",
        "| Benchmark | Method | Time | Figure | Ratio |",
        "|---|---|---:|---:|---:|",
        f"| Conversion | `convert_ned(workers=1)` in a subprocess | {conv['seconds']:.2f} s | "
        f"{conv['mb_per_s']:.0f} MB/s of {conv['source_mb']:.1f} MB source | - |",
        f"| Conversion peak RSS | raw `ru_maxrss` of the subprocess | - | "
        f"{conv['peak_rss_mib']:.0f} MiB | - |",
        f"| Conversion peak RSS | minus import-only subprocess ({conv['import_rss_mib']:.0f} "
        f"MiB) | - | {conv['peak_minus_imports_mib']:.0f} MiB "
        f"({conv['peak_minus_imports_mib'] * 2**20 / 1e6 / conv['source_mb']:.1%} of source)"
        " | - |",
    ]
    lines += [scan_row(scans[k]) for k in scans]
    peak = res["scan_memory"]
    lines += [f"| Scan peak memory | `roi_mean` in a subprocess: peak RSS - RSS after `open` "
              f"| - | {peak['roi_mean_mib']:.0f} MiB | - |",
              f"| Scan peak memory | `da.mean('voxel', skipna=False)`, the same | - | "
              f"{peak['mean_mib']:.0f} MiB | - |"]
    lines += [
        "| Open latency | `nest_data.open(...)` (no response values read), median of "
        f"{OPEN_REPEATS} | "
        f"{opens['nest_data']['median_s'] * 1e3:.2f} ms | - | {open_ratio:.1f} |",
        "| Open latency | the same, then every label's values (strings decode on first use), "
        f"median of {OPEN_REPEATS} | {opens['nest_data_labels']['median_s'] * 1e3:.2f} ms | "
        f"- | {opens['nest_data_labels']['median_s'] / opens['h5py']['median_s']:.1f} |",
        f"| Open latency (baseline) | `h5py.File(path)[ds]`, median of {OPEN_REPEATS} | "
        f"{opens['h5py']['median_s'] * 1e3:.2f} ms | - | 1.0 |",
        f"| Size on disk | Zarr store (all files) | - | {size['store_bytes'] / 1e6:.1f} MB | "
        f"{size['ratio']:.3f} |",
        f"| Size on disk (baseline) | NED `.h5` | - | {size['h5_bytes'] / 1e6:.1f} MB | 1.000 |",
    ]
    return "\n".join(lines) + "\n"


def write_results(res: dict[str, Any], table: str, out_dir: Path, name: str = "bench"
                  ) -> tuple[Path, Path]:
    """Write the Markdown table and the raw JSON (``res`` holds ``timestamp`` and ``mode``)
    as ``<name>-<timestamp>-<mode>.md/.json``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    when = res["timestamp"][:19].replace(":", "").replace("-", "")
    stem = f"{name}-{when}-{res['mode']}"
    md_path = out_dir / f"{stem}.md"
    json_path = out_dir / f"{stem}.json"
    md_path.write_text(table)
    json_path.write_text(json.dumps(res, indent=2) + "\n")
    return md_path, json_path


def scan_record(s: ScanResult) -> dict[str, Any]:
    """JSON-ready record of one full-scan method."""
    return {"key": s.key, "label": s.label, "role": s.role, "seconds": s.timing.seconds,
            "best_s": s.timing.best, "gb_per_s": s.gb_per_s}


def run_benchmark(n_images: int, mode: str) -> dict[str, Any]:
    """Run every stage on a fresh temporary folder and return the raw results.

    Parameters
    ----------
    n_images : int
        Images of the benchmark entry.
    mode : {"full", "quick"}
        Recorded with the results.

    Returns
    -------
    dict
        Raw, JSON-ready results.
    """
    started = time.perf_counter()
    env = environment()  # before the run: records the load average at the start
    with tempfile.TemporaryDirectory(prefix="nest-data-bench-") as tmp:
        root = Path(tmp)
        src, dest = root / "ned", root / "zarr"
        h5_path = make_source(src, n_images)
        h5_bytes = h5_path.stat().st_size
        conversion = measure_conversion(src, dest, h5_bytes)
        raw_path = root / "responses.f32"
        shape = write_raw(h5_path, raw_path)
        scans = measure_scans(h5_path, dest, raw_path, shape)
        opens = measure_open(h5_path, dest)
        scan_memory = measure_scan_memory(dest)
        entry = nest_data.catalog().resolve(imageset=IMAGESET, subject=SUBJECT, roi=ROI)
        store_bytes = tree_bytes(dest / entry.path)
    return {
        "mode": mode,
        "timestamp": dt.datetime.now().isoformat(timespec="seconds"),
        "environment": env,
        "entry": {"imageset": IMAGESET, "subject": SUBJECT, "roi": ROI},
        "shape": list(shape),
        "scan_memory": scan_memory,
        "nbytes": shape[0] * shape[1] * 4,
        "conversion": conversion,
        "scans": [scan_record(s) for s in scans],
        "open": {k: {"seconds": t.seconds, "median_s": t.median} for k, t in opens.items()},
        "size": {"store_bytes": store_bytes, "h5_bytes": h5_bytes,
                 "ratio": store_bytes / h5_bytes},
        "total_seconds": time.perf_counter() - started,
        "loadavg_1min_end": os.getloadavg()[0],
    }


#: The other benchmarks that ``--all`` runs: script and arguments (full, quick).
OTHER_BENCHMARKS: list[tuple[str, list[str], list[str]]] = [
    ("analysis.py", ["--out", str(RESULTS_DIR)], ["--quick", "--out", str(RESULTS_DIR)]),
    ("remote.py", [], ["--quick"]),
    ("codecs.py", [], ["--images", str(N_IMAGES_QUICK)]),
    ("layout.py", [], ["--images", "20000", "--rsm", "300"]),
    ("collection.py", ["--out", str(RESULTS_DIR)], ["--quick", "--out", str(RESULTS_DIR)]),
    ("opening.py", [], ["--quick", "--repeats", "2"]),
]


def run_script(benchmark: tuple[str, list[str], list[str]], quick: bool) -> str:
    """Run one benchmark script in a child process; return the tables it printed."""
    script, full, fast = benchmark
    path = Path(__file__).resolve().parent / script
    logger.info("running %s", script)
    with subprocess.Popen([sys.executable, str(path), *(fast if quick else full)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          cwd=path.parent) as proc:
        try:
            stdout, stderr = proc.communicate()
        except BaseException:
            proc.terminate()  # the script then removes its temporary data
            proc.wait()
            raise
    if proc.returncode:
        raise RuntimeError(f"{script} failed (exit {proc.returncode}):\n{stderr[-4000:]}")
    return f"# {script}\n\n{stdout.strip()}\n"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: run the benchmark, print and save the table.

    Parameters
    ----------
    argv : list of str, optional
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"use {N_IMAGES_QUICK} images instead of {N_IMAGES_FULL}")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR,
                        help="folder for the .md and .json results (default: %(default)s)")
    parser.add_argument("--all", action="store_true",
                        help="then run the analysis, remote, codec, layout, collection and opening "
                             "benchmarks, each in a process of its own, and write all tables "
                             "to one file")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    mode = "quick" if args.quick else "full"
    res = run_benchmark(N_IMAGES_QUICK if args.quick else N_IMAGES_FULL, mode)
    table = markdown_table(res)
    md_path, json_path = write_results(res, table, args.out)
    print(table)
    logger.info("wrote %s and %s (total %.0f s)", md_path, json_path, res["total_seconds"])
    if args.all:
        tables = [table, *(run_script(argv, args.quick) for argv in OTHER_BENCHMARKS)]
        all_path = md_path.with_name(md_path.name.replace("bench-", "all-", 1))
        all_path.write_text("\n\n".join(tables))
        logger.info("wrote %s", all_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
