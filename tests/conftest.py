"""Fixtures of the remote and fault tests: the test entry, and served copies of it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest

from nest_data._write import write_entry
from nest_data.converters._pickle import load_npy_dict
from nest_data.converters.ned import discover_ned
from nest_data.converters.ned_entry import entry_data

from .backends import KEYS, ROWS, Backend
from .servers import GCSServer, HTTPServer, S3Server


@pytest.fixture(scope="module")
def chunked(ned_src: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local root with things sub-01 V1 stored in chunks of 4 images (8 chunks)."""
    import h5py

    root = tmp_path_factory.mktemp("chunked")
    (source,) = discover_ned(ned_src, **KEYS)
    with h5py.File(source.h5) as f:
        data = entry_data(source, f["synthetic_neural_responses"], load_npy_dict(source.npy),
                          units="a.u.")
        write_entry(data, root, source.entry.path, chunk_bytes=ROWS * 1350 * 4)
    return root


@pytest.fixture(scope="session")
def fwrf_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A location root holding converted fwRF weights of sub-01 V1 (12 voxels; needs torch)."""
    pytest.importorskip("torch")
    from nest_data.converters.weights import convert_fwrf_weights
    from nest_data.synthetic import write_fwrf_weights

    src, dest = tmp_path_factory.mktemp("nest"), tmp_path_factory.mktemp("weights")
    write_fwrf_weights(src, 1, "V1", n_voxels=12)
    convert_fwrf_weights(src, dest, trust_pickles=True)
    return dest


@pytest.fixture(scope="module", params=["local", "memory", "s3", "gcs", "http"])
def backend(request: pytest.FixtureRequest, chunked: Path) -> Iterator[Backend]:
    name = request.param
    if name == "local":
        yield Backend(name, str(chunked), {}, None)
        return
    if name == "memory":
        root = f"memory://nest-{uuid.uuid4().hex}"
        fs = fsspec.filesystem("memory")
        fs.put(str(chunked) + "/", root.removeprefix("memory://") + "/", recursive=True)
        yield Backend(name, root, {}, None)
        fs.rm(root.removeprefix("memory://"), recursive=True)
        return
    server_cls = {"s3": S3Server, "gcs": GCSServer, "http": HTTPServer}[name]
    with server_cls() as server:
        server.upload(chunked)
        yield Backend(name, server.url, dict(server.storage_options), server)

