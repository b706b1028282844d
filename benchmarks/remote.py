"""Remote reads over HTTP with simulated latency: requests, bytes and time.

Run: ``python benchmarks/remote.py [--quick] [--latency 0.05]``.  Serves one entry (sub-01
``lateral`` on ``things``; 26,107 x 7,799 float32 = 814 MB, or 4,000 images with ``--quick``)
from the in-process HTTP server of the test suite (Range support, ``latency`` seconds added
to every request), and measures what nest-data moves for: opening the entry, reading one
image, and a full scan (mean over voxels), plus full-scan time under several concurrency
settings.  Figures are ratios against the whole store and NED's HDF5 file in the same run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import dask
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from run import exit_on_sigterm

import nest_data
from nest_data.converters import convert_ned
from nest_data.synthetic import ned_file_paths, write_ned
from tests.servers import HTTPServer

KEYS = {"imageset": "things", "subject": 1, "roi": "lateral"}


def _served(server: HTTPServer) -> tuple[int, int]:
    requests = server.requests
    return len(requests), sum(r.bytes_sent for r in requests)


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure(server: HTTPServer, label: str, fn: Any) -> dict[str, Any]:
    """Run ``fn`` against a freshly reset server; return requests, bytes and seconds."""
    server.reset()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    n, nbytes = _served(server)
    return {"what": label, "requests": n, "bytes": nbytes, "seconds": seconds,
            "result": result}


def main() -> None:
    """Print Markdown tables of the measurements."""
    warnings.filterwarnings("ignore", message="The specified chunks separate")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--latency", type=float, default=0.05)
    args = parser.parse_args()
    exit_on_sigterm()
    n_images = 4000 if args.quick else 26107
    with tempfile.TemporaryDirectory() as tmp:
        write_ned(tmp, modalities=["fmri"], subjects=[1], rois=["lateral"],
                  imagesets=["things"], n_images=n_images, show_progress=False)
        root = Path(tmp) / "collection"
        convert_ned(tmp, root, workers=1, show_progress=False)
        h5_bytes = ned_file_paths(tmp, "fmri", "things", 1, "lateral")[0].stat().st_size
        store = root / nest_data.catalog().resolve(**KEYS).path
        store_bytes = _size(store)
        local = nest_data.open(location=str(root), **KEYS)
        expected = local.mean("voxel").values
        with HTTPServer(latency=args.latency) as server:
            server.upload(root)
            url = server.url
            rows = [
                measure(server, "open, first in the process (metadata + labels)",
                        lambda: nest_data.open(location=url, **KEYS)),
                measure(server, "open again (HTTP session warm)",
                        lambda: nest_data.open(location=url, **KEYS)),
            ]
            da = nest_data.open(location=url, **KEYS)
            rows.append(measure(server, "one image", lambda: da.isel(image=1234).values))
            rows.append(measure(server, "full scan, default settings",
                                lambda: da.mean("voxel").values))
            np.testing.assert_allclose(rows[-1]["result"], expected, rtol=1e-5)
            scans = []
            rows_per_chunk = local.chunks[0][0]  # one stored shard per task, as local reads
            for k in (1, 2, 4, 8):
                grouped = nest_data.open(location=url, chunks={"image": rows_per_chunk * k},
                                         **KEYS)
                row = measure(server, f"full scan, {k} stored chunks per dask task",
                              lambda g=grouped: g.mean("voxel").values)
                np.testing.assert_allclose(row["result"], expected, rtol=1e-5)
                scans.append(row)
            for threads in (4, 8, 16):
                with dask.config.set(num_workers=threads):
                    row = measure(server, f"full scan, {threads} dask threads",
                                  lambda: da.mean("voxel").values)
                np.testing.assert_allclose(row["result"], expected, rtol=1e-5)
                scans.append(row)
        print(f"## Remote reads over HTTP, {args.latency * 1000:.0f} ms per request\n")
        print(f"Entry: things sub-01 lateral, {n_images} x 7799 float32; store "
              f"{store_bytes / 1e6:.1f} MB in {local.data.npartitions} shards; NED HDF5 "
              f"{h5_bytes / 1e6:.1f} MB.\n")
        print("| what | requests | MB moved | % of store | % of NED HDF5 | time (s) |")
        print("|---|---:|---:|---:|---:|---:|")
        for row in rows + scans:
            print(f"| {row['what']} | {row['requests']} | {row['bytes'] / 1e6:.2f} | "
                  f"{100 * row['bytes'] / store_bytes:.2f} | {100 * row['bytes'] / h5_bytes:.2f} "
                  f"| {row['seconds']:.2f} |")
        best = min(scans, key=lambda r: r["seconds"])
        default = rows[3]["seconds"]
        print(f"\nDefault full scan {default:.2f} s; best {best['seconds']:.2f} s "
              f"({best['what']}), {default / best['seconds']:.1f}x faster.")


if __name__ == "__main__":
    main()
