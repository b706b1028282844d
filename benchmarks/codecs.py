"""Which compressor for ``responses``: size and full-scan speed of candidate codecs.

Run: ``python benchmarks/codecs.py [--images 10000]``.  Writes the same fMRI responses
(sub-01 ``lateral`` on ``things`` from the miniature NED writer, 7,799 voxels) with each
codec, in nest-data's chunking, and times a dask full scan (mean over voxels), best of 3.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import dask.array as dsa
import h5py
import numpy as np
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from nest_data._store import chunk_rows
from nest_data.testing import ned_file_paths, write_ned

CODECS = {
    "none": None,
    "zstd level 3 (design default)": [ZstdCodec(level=3)],
    "zstd level 1": [ZstdCodec(level=1)],
    "blosc lz4 + shuffle (chosen)": [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle",
                                                typesize=4)],
    "blosc zstd-1 + shuffle": [BloscCodec(cname="zstd", clevel=1, shuffle="shuffle",
                                          typesize=4)],
    "blosc lz4 + bitshuffle": [BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle",
                                          typesize=4)],
}


def _size(path: Path) -> int:
    return sum(os.path.getsize(Path(d) / f) for d, _, files in os.walk(path) for f in files)


def main() -> None:
    """Print a Markdown table: codec, size vs raw, write and scan throughput."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=10000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        write_ned(tmp, modalities=["fmri"], subjects=[1], rois=["lateral"], imagesets=["things"],
                  n_images=args.images, show_progress=False)
        with h5py.File(ned_file_paths(tmp, "fmri", "things", 1, "lateral")[0]) as f:
            x = f["synthetic_neural_responses"][:]
        rows = chunk_rows(x.shape[1] * 4, x.shape[0])
        expected = x.mean(axis=1)
        print(f"{x.shape[0]} x {x.shape[1]} float32 ({x.nbytes / 1e6:.0f} MB), "
              f"chunks of {rows} images\n")
        print("| codec | size / raw | write GB/s | scan GB/s |\n|---|---:|---:|---:|")
        for name, codec in CODECS.items():
            path = Path(tmp) / f"{len(os.listdir(tmp))}.zarr"
            array = zarr.create_array(path, shape=x.shape, chunks=(rows, x.shape[1]),
                                      dtype="float32", compressors=codec)
            start = time.perf_counter()
            array[:] = x
            write = time.perf_counter() - start
            best = np.inf
            for _ in range(3):
                start = time.perf_counter()
                got = dsa.from_zarr(str(path)).mean(axis=1).compute()
                best = min(best, time.perf_counter() - start)
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
            print(f"| {name} | {_size(path) / x.nbytes:.3f} | {x.nbytes / write / 1e9:.2f} | "
                  f"{x.nbytes / best / 1e9:.2f} |")


if __name__ == "__main__":
    main()
