"""Which codecs for ``responses``: size, and full-scan speed through each read path.

Run: ``python benchmarks/codecs.py [--images 10000]``.  Writes the same fMRI responses
(sub-01 ``lateral`` on ``things`` from the miniature NED writer, 7,799 voxels) with nest-data's
writer and each inner-chunk codec, in nest-data's layout (shards of about 8 MB, inner chunks
of at most 128 KB, each with its CRC-32C), and times full scans (mean over voxels per image)
through:

- nest-data's direct reader (``nest_data.roi_mean`` on dask threads), where it reads the codec;
- zarr's own read path (``dask.array.from_zarr(...).mean``), with zarr's Python codec
  pipeline and, if ``zarrs`` is installed (``pip install 'nest-data[bench]'``), its Rust one;
- h5py on NED's contiguous HDF5 of the same values (the baseline of every ratio).

Best of 5 rounds, interleaved; warm page cache.  Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask.array as dsa
import h5py
import numpy as np
import zarr
from run import exit_on_sigterm
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

import nest_data
import nest_data._write as store_module
from nest_data._format import DATA_VAR, EntryData
from nest_data._open import _open_url
from nest_data._write import write_entry
from nest_data.synthetic import ned_file_paths, write_ned

CODECS: dict[str, Callable[[Any], tuple[Any, ...]]] = {
    "none + CRC-32C (chosen)": lambda dtype: (Crc32cCodec(),),
    "Blosc LZ4 + shuffle + CRC-32C": lambda dtype: (
        BloscCodec(cname="lz4", clevel=5, shuffle="shuffle", typesize=4), Crc32cCodec()),
    "zstd level 1 + CRC-32C": lambda dtype: (ZstdCodec(level=1), Crc32cCodec()),
}
ROUNDS = 5


def _size(path: Path) -> int:
    return sum(os.path.getsize(Path(d) / f) for d, _, files in os.walk(path) for f in files)


def _zarr_scan(path: Path, pipeline: str | None) -> Callable[[], np.ndarray]:
    def scan() -> np.ndarray:
        config = {"codec_pipeline.path": pipeline} if pipeline else {}
        with zarr.config.set(config):
            array = zarr.open_array(path, path=DATA_VAR, mode="r")
            return np.asarray(dsa.from_zarr(array, chunks=(array.shards or array.chunks))
                              .mean(axis=1).compute())
    return scan


def main() -> None:
    """Print a Markdown table: codec, size vs raw, write speed and scan speeds."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=10000)
    args = parser.parse_args()
    exit_on_sigterm()
    try:
        import zarrs  # noqa: F401
        pipelines: list[tuple[str, str | None]] = [("zarr", None),
                                                   ("zarrs", "zarrs.ZarrsCodecPipeline")]
    except ImportError:
        pipelines = [("zarr", None)]
    with tempfile.TemporaryDirectory() as tmp:
        write_ned(tmp, modalities=["fmri"], subjects=[1], rois=["lateral"], imagesets=["things"],
                  n_images=args.images, show_progress=False)
        h5_path = ned_file_paths(tmp, "fmri", "things", 1, "lateral")[0]
        with h5py.File(h5_path) as f:
            x = f["synthetic_neural_responses"][:]
        expected = x.astype(np.float64).mean(axis=1)

        def h5py_scan() -> np.ndarray:
            with h5py.File(h5_path) as f:
                ds = f["synthetic_neural_responses"]
                return np.concatenate([ds[i:i + 4096].mean(axis=1)
                                       for i in range(0, ds.shape[0], 4096)])

        scans: dict[str, Callable[[], np.ndarray]] = {"h5py": h5py_scan}
        rows: list[dict[str, Any]] = []
        original = store_module.response_codecs
        for name, codecs in CODECS.items():
            store_module.response_codecs = codecs  # type: ignore[assignment]
            data = EntryData(dims=("image", "voxel"), shape=x.shape,
                             read_rows=lambda a, b: x[a:b],
                             coords={"ncsnr": (("voxel",), np.ones(x.shape[1], "f4"), {})},
                             attrs={"modality": "fmri"}, keys={})
            start = time.perf_counter()
            write_entry(data, tmp, f"{len(rows)}.zarr")
            write = time.perf_counter() - start
            path = Path(tmp) / f"{len(rows)}.zarr"
            da = _open_url(str(path), {}, None, None, cache=None, verify=None,
                           load_labels=True)[DATA_VAR]
            if "Blosc" in name or "none" in name:  # what the direct reader reads
                scans[f"{name}|nest-data"] = lambda da=da: nest_data.roi_mean(da).values
            for label, pipeline in pipelines:
                scans[f"{name}|{label}"] = _zarr_scan(path, pipeline)
            rows.append({"name": name, "size": _size(path / DATA_VAR) / x.nbytes,
                         "write": x.nbytes / write / 1e9})
        store_module.response_codecs = original
        best = {key: np.inf for key in scans}
        for _ in range(ROUNDS):
            for key, scan in scans.items():
                start = time.perf_counter()
                got = scan()
                best[key] = min(best[key], time.perf_counter() - start)
                np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
        paths = ["nest-data", *(label for label, _ in pipelines)]
        print(f"{x.shape[0]} x {x.shape[1]} float32 ({x.nbytes / 1e6:.0f} MB); "
              f"{platform.node() and os.cpu_count()} CPUs; h5py scan "
              f"{x.nbytes / best['h5py'] / 1e9:.2f} GB/s\n")
        print("| inner-chunk codecs | size / raw | write GB/s | "
              + " | ".join(f"scan via {p}: GB/s (x h5py)" for p in paths) + " |")
        print("|---|---:|---:|" + "---:|" * len(paths))
        for row in rows:
            cells = []
            for p in paths:
                t = best.get(f"{row['name']}|{p}")
                cells.append("-" if t is None else
                             f"{x.nbytes / t / 1e9:.2f} ({best['h5py'] / t:.2f}x)")
            print(f"| {row['name']} | {row['size']:.3f} | {row['write']:.2f} | "
                  + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
