"""PyTorch data pipeline: samples/s, bytes read and peak memory per worker, against h5py.

Run: ``python benchmarks/torch_pipeline.py [--quick] [--latency 0.02] [--repeats 3]``.

Writes NED's HDF5 of one fMRI entry (things sub-01 ``lateral``, 7,799 voxels) with
:func:`nest_data.synthetic.write_ned`, converts it with :func:`nest_data.converters.convert_ned`
and reads one shuffled epoch of (image, responses) batches through a ``DataLoader``:

- **baseline**: a plain map-style ``torch.utils.data.Dataset`` whose ``__getitem__`` reads one
  row of NED's HDF5 with h5py (``DataLoader(shuffle=True, batch_size=B)``); remotely, the
  same file opened through fsspec's HTTP file (its default read-ahead block);
- :class:`nest_data.torch.ResponseBatches` (``DataLoader(batch_size=None)``): shards
  shuffled, images shuffled inside a buffer of 4 shards;
- :class:`nest_data.torch.ResponseDataset` with ``DataLoader(shuffle=True, batch_size=B)``.

Locally and over the test suite's HTTP server with ``latency`` seconds added to each request.
Bytes read: locally the bytes the loading processes read through ``read``/``pread``
(``psutil`` ``read_chars``: page-cache hits included, so it is what the reader asks for, not
what the disk moved); remotely the bytes the server sent.  Memory, of each loading process
(each worker, or the main process without workers; the largest shown): its peak resident
set (``VmHWM``, which counts the pages a forked worker shares with its parent) and its
private memory at the end of the epoch (``psutil`` USS).  Every epoch's values are
checked against the HDF5 rows.  Ratios are against the baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import h5py
import torch
from run import exit_on_sigterm
from torch.utils.data import DataLoader, Dataset

import nest_data
from nest_data.converters import convert_ned
from nest_data.synthetic import ned_file_paths, write_ned
from nest_data.torch import ResponseBatches, ResponseDataset
from tests.servers import HTTPServer

KEYS: dict[str, Any] = {"imageset": "things", "subject": 1, "roi": "lateral"}
H5_NAME = "synthetic_neural_responses"


class H5Rows(Dataset[dict[str, Any]]):
    """The baseline: one HDF5 row per ``__getitem__`` (the file opened once per process)."""

    def __init__(self, source: str | Path, n: int) -> None:
        self.source, self.n = str(source), n
        self._pid = -1
        self._rows: Any = None

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self._pid != os.getpid():  # h5py handles do not survive a fork
            import fsspec

            raw = (fsspec.open(self.source).open() if "://" in self.source else self.source)
            self._rows, self._pid = h5py.File(raw, "r")[H5_NAME], os.getpid()
        return {"responses": torch.from_numpy(self._rows[i]), "index": i}


def _peak_rss(pid: int) -> int:  # psutil does not read it
    """Peak resident set of a process (``VmHWM``, bytes)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _loaders(workers: list[psutil.Process]) -> list[psutil.Process]:
    return workers or [psutil.Process()]


def one_epoch(make: Callable[[], DataLoader[Any]], expected: np.ndarray, workers: int,
              server: HTTPServer | None, limit: int | None) -> dict[str, float]:
    """Time one epoch (after a warm-up epoch that starts persistent workers)."""
    loader = make()
    seen = 0
    for _ in loader:  # warm-up: workers started, files opened
        break
    me = psutil.Process()
    procs = me.children() if workers else []
    before = sum(p.io_counters().read_chars for p in _loaders(procs))
    if server is not None:
        server.reset()
    checking = 0.0
    start = time.perf_counter()
    for batch in loader:
        tick = time.perf_counter()  # the check is not the loader's time
        index = batch["index"].numpy()
        np.testing.assert_array_equal(batch["responses"].numpy(), expected[index])
        seen += index.size
        checking += time.perf_counter() - tick
        if limit is not None and seen >= limit:
            break
    seconds = time.perf_counter() - start - checking
    after = sum(p.io_counters().read_chars for p in _loaders(procs))
    moved = (sum(r.bytes_sent for r in server.requests) if server is not None
             else after - before)
    requests = len(server.requests) if server is not None else 0
    peak = max(_peak_rss(p.pid) for p in _loaders(procs))
    private = max(p.memory_full_info().uss for p in _loaders(procs))
    del loader
    return {"samples_per_s": seen / seconds, "bytes_per_sample": moved / seen,
            "requests": requests, "peak_mib": peak / 2**20, "uss_mib": private / 2**20,
            "samples": seen}


def main() -> None:
    """Print Markdown tables of the measurements."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    exit_on_sigterm()
    torch.set_num_threads(1)
    n_images = 2000 if args.quick else 6000
    remote_limit = 128 if args.quick else 256  # the HTTP baseline reads a part of an epoch
    b = args.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        write_ned(tmp, modalities=["fmri"], subjects=[1], rois=["lateral"],
                  imagesets=["things"], n_images=n_images, show_progress=False)
        root = Path(tmp) / "collection"
        convert_ned(tmp, root, workers=1, show_progress=False)
        h5_path = ned_file_paths(tmp, "fmri", "things", 1, "lateral")[0]
        with h5py.File(h5_path) as f:
            expected = np.asarray(f[H5_NAME][:], dtype=np.float32)
        local = nest_data.open(location=str(root), **KEYS)
        row_bytes = expected[0].nbytes

        def loader(ds: Any, workers: int, **kw: Any) -> Callable[[], DataLoader[Any]]:
            return lambda: DataLoader(ds, num_workers=workers, persistent_workers=workers > 0,
                                      **kw)

        results: dict[tuple[str, str, int], list[dict[str, float]]] = {}

        def run(where: str, name: str, workers: int, make: Callable[[], DataLoader[Any]],
                server: HTTPServer | None = None, limit: int | None = None) -> None:
            for _ in range(args.repeats):
                results.setdefault((where, name, workers), []).append(
                    one_epoch(make, expected, workers, server, limit))

        gen = torch.Generator().manual_seed(0)
        for workers in (0, 2):
            run("local", "h5py rows, plain Dataset", workers,
                loader(H5Rows(h5_path, n_images), workers, batch_size=b, shuffle=True,
                       generator=gen))
            run("local", "ResponseBatches", workers,
                loader(ResponseBatches(local, batch_size=b, seed=0), workers, batch_size=None))
            run("local", "ResponseDataset, shuffle=True", workers,
                loader(ResponseDataset(local), workers, batch_size=b, shuffle=True,
                       generator=gen))
        with HTTPServer(latency=args.latency) as server:
            server.upload(Path(tmp))
            url = server.url
            remote = nest_data.open(location=f"{url}/collection", **KEYS)
            h5_url = f"{url}/{h5_path.relative_to(tmp).as_posix()}"
            for workers in (0, 2):
                run("HTTP", "h5py rows, plain Dataset", workers,
                    loader(H5Rows(h5_url, n_images), workers, batch_size=b, shuffle=True,
                           generator=gen), server, remote_limit)
                run("HTTP", "ResponseBatches", workers,
                    loader(ResponseBatches(remote, batch_size=b, seed=0), workers,
                           batch_size=None), server)
                run("HTTP", "ResponseDataset, shuffle=True", workers,
                    loader(ResponseDataset(remote), workers, batch_size=b, shuffle=True,
                           generator=gen), server)
    _report(results, args, n_images, row_bytes, remote_limit)


def _span(values: list[float], fmt: str) -> str:
    lo, hi = min(values), max(values)
    return format(lo, fmt) if format(lo, fmt) == format(hi, fmt) else (
        f"{format(lo, fmt)}-{format(hi, fmt)}")


def _report(results: dict[tuple[str, str, int], list[dict[str, float]]], args: Any,
            n_images: int, row_bytes: int, remote_limit: int) -> None:
    today = datetime.datetime.now(datetime.UTC).date().isoformat()
    mem = psutil.virtual_memory().total / 2**30
    print(f"## PyTorch pipeline: one shuffled epoch, batch {args.batch_size}\n")
    print(f"{today}; {platform.processor() or platform.machine()}, {psutil.cpu_count()} "
          f"cores, {mem:.0f} GiB, no GPU; torch {torch.__version__}; entry things sub-01 "
          f"lateral, {n_images} x 7,799 float32 ({row_bytes} B a row); HTTP: "
          f"{args.latency * 1000:.0f} ms a request, the h5py baseline over its first "
          f"{remote_limit} samples.  Ranges over {args.repeats} epochs.\n")
    print("| where | reader | workers | samples/s | x baseline | bytes read per sample | "
          "x row size | requests | peak RSS MiB | private MiB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (where, name, workers), runs in results.items():
        base = results[(where, "h5py rows, plain Dataset", workers)]
        rate = [r["samples_per_s"] for r in runs]
        ratio = [r["samples_per_s"] / np.median([x["samples_per_s"] for x in base])
                 for r in runs]
        per = [r["bytes_per_sample"] for r in runs]
        print(f"| {where} | {name} | {workers} | {_span(rate, '.0f')} | {_span(ratio, '.2f')} "
              f"| {_span(per, '.0f')} | {_span([p / row_bytes for p in per], '.2f')} | "
              f"{_span([r['requests'] for r in runs], '.0f')} | "
              f"{_span([r['peak_mib'] for r in runs], '.0f')} | "
              f"{_span([r['uss_mib'] for r in runs], '.0f')} |")


if __name__ == "__main__":
    main()
