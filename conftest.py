"""Shared fixtures (tests and doctests): data made here, caches in tmp dirs, loopback only."""

from __future__ import annotations

import ipaddress
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from nest_data.converters import convert_ned
from nest_data.synthetic import write_ned

# Modules that need the optional `encode` extra are not collected (for doctests) without it.
collect_ignore: list[str] = []
try:
    import safetensors  # noqa: F401
    import torch  # noqa: F401
except ImportError:
    collect_ignore += ["nest_data/encoders", "converters/weights.py"]

# A small but complete slice of the collection: both modalities, every image set.
MINI = {"subjects": [1, 2], "rois": ["V1", "FFA-1", "lateral"], "n_images": 30}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _session_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Point every cache at a session temp dir and hide the user's own configuration.

    ``tempfile`` is pointed at the session's base temp dir too, so the directories that
    docstring examples make with ``tempfile.mkdtemp()`` go with pytest's own clean-up
    instead of piling up in the system temp dir run after run (``TMPDIR`` for the
    commands that tests start).
    """
    saved = {k: os.environ.get(k) for k in ("NEST_DATA_CACHE_DIR", "NEST_DATA_ROOT",
                                            "NEST_DATA_LOCATION", "NEST_DATA_CATALOGS",
                                            "NEST_DATA_PROGRESS", "TMPDIR")}
    saved_tempdir = tempfile.tempdir
    tempfile.tempdir = os.environ["TMPDIR"] = str(tmp_path_factory.mktemp("tempfile"))
    os.environ["NEST_DATA_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    os.environ["NEST_DATA_PROGRESS"] = "0"
    for k in ("NEST_DATA_ROOT", "NEST_DATA_LOCATION", "NEST_DATA_CATALOGS"):
        os.environ.pop(k, None)
    yield
    tempfile.tempdir = saved_tempdir
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any connection to a non-loopback address."""
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: object) -> object:
        host = address[0] if isinstance(address, tuple) else None
        if isinstance(host, str):
            try:
                ok = ipaddress.ip_address(host).is_loopback
            except ValueError:
                ok = host == "localhost"
            if not ok:
                raise RuntimeError(f"test tried to reach {host}: tests stay on loopback")
        return real_connect(self, address)  # type: ignore[arg-type]

    monkeypatch.setattr(socket.socket, "connect", guarded)


@pytest.fixture(scope="session")
def ned_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A miniature NED folder (both modalities, every image set) written once per session."""
    root = tmp_path_factory.mktemp("ned")
    write_ned(root, modalities=["fmri"], subjects=MINI["subjects"], rois=MINI["rois"],
              n_images=MINI["n_images"], show_progress=False)
    write_ned(root, modalities=["eeg"], subjects=[1], n_images=MINI["n_images"],
              show_progress=False)
    return root


@pytest.fixture(scope="session")
def collection(ned_src: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``ned_src`` converted once per session; tests must not modify it."""
    dest = tmp_path_factory.mktemp("collection")
    convert_ned(ned_src, dest, workers=2, show_progress=False)
    return dest


@pytest.fixture(scope="session")
def demo(_session_env: None) -> Path:
    """The full embedded demo collection, built once per session in the session cache."""
    import nest_data

    return nest_data.build_demo(show_progress=False)


@pytest.fixture(autouse=True)
def _demo_for_doctests(request: pytest.FixtureRequest) -> None:
    """Docstring examples run on the demo data, as the README promises."""
    if isinstance(request.node, pytest.DoctestItem):
        request.getfixturevalue("demo")
