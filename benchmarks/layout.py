"""How big the inner chunks of ``responses`` should be: what each size costs and buys.

Run: ``python benchmarks/layout.py [--images 73000] [--rsm 1000]``.  Writes sub-01 ``V1`` on
``nsd`` (1,350 voxels, 5.4 KB per image) with the miniature NED writer, converts it with
inner chunks of at most 32, 64 and 128 KB (the shards stay about 8 MB), and measures, best of
5 rounds interleaved, warm page cache:

- an RSM of ``--rsm`` random images (``nest_data.rsm``), against ``numpy.corrcoef`` on the
  same rows read with h5py from NED's HDF5; and its reading alone (the inner chunks holding
  the images, read and checked), against h5py's read of the rows;
- a full scan with ``nest_data.roi_mean`` and through zarr-python's own read path
  (``dask.array.from_zarr(...).mean``), against h5py reading the HDF5 in blocks;
- the bytes one image costs from a bucket: the shard's index and one inner chunk.

A smaller inner chunk reads fewer bytes around each picked image; zarr-python pays a fixed
cost per inner chunk.  Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask.array as dsa
import h5py
import numpy as np
import zarr
from run import exit_on_sigterm, time_interleaved

import nest_data
import nest_data._format
from nest_data._format import DATA_VAR
from nest_data.converters import convert_ned
from nest_data.synthetic import ned_file_paths, write_ned

SIZES_KB = (32, 64, 128)
ROUNDS = 5
DATASET = "synthetic_neural_responses"


def main() -> None:
    """Print a Markdown table: inner-chunk size against RSM, scan and one-image costs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=73000)
    parser.add_argument("--rsm", type=int, default=1000)
    args = parser.parse_args()
    exit_on_sigterm()
    keys = {"imageset": "nsd", "subject": 1, "roi": "V1"}
    with tempfile.TemporaryDirectory(prefix="nest-data-layout-") as tmp:
        root = Path(tmp)
        write_ned(root / "ned", modalities=["fmri"], subjects=[1], rois=["V1"],
                  imagesets=["nsd"], n_images=args.images, show_progress=False)
        h5 = ned_file_paths(root / "ned", "fmri", "nsd", 1, "V1")[0]
        images = np.sort(np.random.default_rng(0).choice(args.images, args.rsm,
                                                          replace=False))
        opened: dict[int, Any] = {}
        default = nest_data._format.INNER_CHUNK_BYTES
        for kb in SIZES_KB:
            nest_data._format.INNER_CHUNK_BYTES = kb * 2**10
            convert_ned(root / "ned", root / f"inner-{kb}", workers=1, show_progress=False)
            opened[kb] = nest_data.open(location=str(root / f"inner-{kb}"), **keys)
        nest_data._format.INNER_CHUNK_BYTES = default

        def h5_rows() -> np.ndarray:
            with h5py.File(h5, "r") as f:
                return f[DATASET][images]

        def h5_scan() -> np.ndarray:
            with h5py.File(h5, "r") as f:
                ds = f[DATASET]
                return np.concatenate([ds[i:i + 4096].mean(axis=1)
                                       for i in range(0, ds.shape[0], 4096)])

        ways: dict[str, Callable[[], Any]] = {"rsm|h5py": lambda: np.corrcoef(h5_rows()),
                                              "read|h5py": h5_rows, "scan|h5py": h5_scan}
        for kb, da in opened.items():
            store = root / f"inner-{kb}" / nest_data.catalog().resolve(**keys).path
            array = zarr.open_array(store, path=DATA_VAR, mode="r")
            ways[f"rsm|{kb}"] = lambda da=da: nest_data.rsm(da, images).values
            ways[f"read|{kb}"] = lambda da=da: nest_data.select_images(da, images).values
            ways[f"scan|{kb}"] = lambda da=da: nest_data.roi_mean(da).values
            ways[f"zarr|{kb}"] = lambda a=array: dsa.from_zarr(
                a, chunks=a.shards or a.chunks).mean(axis=1).compute()
        best = {key: min(t) for key, t in time_interleaved(ways, ROUNDS).items()}
        reference = np.corrcoef(h5_rows())
        for da in opened.values():
            np.testing.assert_allclose(nest_data.rsm(da, images).values, reference, atol=1e-6)
        row_bytes = int(opened[SIZES_KB[0]].sizes["voxel"]) * 4
        print(f"nsd sub-01 V1, {args.images} x {row_bytes // 4} float32 "
              f"({args.images * row_bytes / 1e6:.0f} MB), RSM of {args.rsm} random images; "
              f"{platform.machine()}, best of {ROUNDS}; h5py: RSM {best['rsm|h5py']:.3f} s "
              f"(read {best['read|h5py']:.3f} s, {args.rsm * row_bytes / 1e6:.1f} MB), "
              f"scan {best['scan|h5py']:.3f} s\n")
        print("| inner chunk | images per chunk | RSM: s (x h5py + corrcoef) | its reading: "
              "MB, s (x h5py) | `roi_mean` scan (x h5py) | zarr-python scan (x h5py) | "
              "one image from a bucket |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for kb in SIZES_KB:
            shard = opened[kb].data.chunks[0][0]
            inner = nest_data._format.inner_rows(shard, row_bytes, kb * 2**10)
            chunks = len(np.unique(images // inner))
            one = (shard // inner) * 16 + 4 + inner * row_bytes + 4
            print(f"| {kb} KB{' (chosen)' if kb * 2**10 == default else ''} | {inner} | "
                  f"{best[f'rsm|{kb}']:.3f} ({best['rsm|h5py'] / best[f'rsm|{kb}']:.2f}x) | "
                  f"{chunks * (inner * row_bytes + 4) / 1e6:.0f} MB, "
                  f"{best[f'read|{kb}']:.3f} ({best['read|h5py'] / best[f'read|{kb}']:.2f}x) | "
                  f"{best['scan|h5py'] / best[f'scan|{kb}']:.2f}x | "
                  f"{best['scan|h5py'] / best[f'zarr|{kb}']:.2f}x | {one / 1e3:.0f} KB |")


if __name__ == "__main__":
    main()
