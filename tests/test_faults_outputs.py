"""Every command's output is safe: ``encode --out`` and the demo's arguments.

``encode --out`` writes whole or not at all, replaces only what nest-data wrote (anything else
with ``--overwrite``), names a full disk and an unreachable location, and never shows a
traceback; ``build_demo`` and ``nest-data demo`` refuse bad arguments before writing anything.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

pytest.importorskip("torch")

import nest_data
from nest_data._cli import main
from nest_data._output import WRITER_ATTR, write_output
from nest_data.converters.weights import convert_fwrf_weights
from nest_data.synthetic import test_images, write_fwrf_weights

from .servers import HTTPServer

N_VOXELS = 6
#: ``run(*extra, images=2, location=None)``: ``nest-data encode`` on the test images and
#: weights with ``extra`` arguments; returns the exit status and what went to stderr.
EncodeCLI = Callable[..., tuple[int, str]]


@pytest.fixture(scope="module")
def weights_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Converted fwRF weights of sub-01 V1 (a few voxels)."""
    src = tmp_path_factory.mktemp("nest")
    dest = tmp_path_factory.mktemp("converted")
    write_fwrf_weights(src, 1, "V1", n_voxels=N_VOXELS)
    convert_fwrf_weights(src, dest, trust_pickles=True)
    return dest


@pytest.fixture(scope="module")
def image_files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    files = []
    for k, pixels in enumerate(test_images(3, 64, seed=5)):
        files.append(str(folder / f"im{k}.png"))
        Image.fromarray(pixels).save(files[-1])
    return files


@pytest.fixture
def encode_cli(weights_root: Path, image_files: list[str], capsys: pytest.CaptureFixture[str]
               ) -> EncodeCLI:
    """See :data:`EncodeCLI`."""

    def run(*extra: str, images: int = 2, location: str | None = None) -> tuple[int, str]:
        capsys.readouterr()
        status = main(["--no-progress", "encode", *image_files[:images], "--subject", "1",
                       "--roi", "V1", "--location", location or str(weights_root), *extra])
        return status, capsys.readouterr().err

    return run


def _expected(weights_root: Path, image_files: list[str], images: int = 2) -> xr.DataArray:
    return nest_data.encode(image_files[:images], subject=1, roi="V1",
                            location=str(weights_root))


def _responses(out: Path) -> np.ndarray:
    kwargs = {"engine": "zarr"} if out.suffix == ".zarr" else {}
    with xr.open_dataset(out, **kwargs) as ds:
        return np.asarray(ds.responses.values)


def _no_leftovers(folder: Path, *expected: str) -> None:
    assert sorted(p.name for p in folder.iterdir()) == sorted(expected)


# ------------------------------------------------------------------------------------------
# Where the output goes
# ------------------------------------------------------------------------------------------


def test_missing_parent_folders_are_created(encode_cli: EncodeCLI, weights_root: Path,
                                            image_files: list[str], tmp_path: Path) -> None:
    out = tmp_path / "new" / "deeper" / "r.nc"
    status, err = encode_cli("--out", str(out))
    assert (status, err) == (0, "")
    np.testing.assert_array_equal(_responses(out), _expected(weights_root, image_files).values)
    _no_leftovers(out.parent, "r.nc")


@pytest.mark.parametrize("name", ["r.nc", "r.zarr"])
def test_unwritable_places_are_refused_before_encoding(
        encode_cli: EncodeCLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    import nest_data._encode

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("encoded although the output cannot be written")

    monkeypatch.setattr(nest_data._encode, "encode", never)
    (tmp_path / "file.txt").write_text("mine")
    for out, message in (
            (f"/proc/{name}", "cannot write in the destination /proc ("),
            (str(tmp_path / "file.txt" / name),
             f"the destination {tmp_path / 'file.txt'} is a file, not a folder; give a folder")):
        status, err = encode_cli("--out", out)
        assert status == 2 and message in err and "Traceback" not in err, err
    assert (tmp_path / "file.txt").read_text() == "mine"
    status, err = encode_cli("--out", str(tmp_path / "r.txt"))
    assert status == 2
    assert "give a file ending in .nc (NetCDF) or a folder ending in .zarr" in err
    status, err = encode_cli("--overwrite")
    assert status == 2
    assert "--overwrite replaces what is at --out, and no --out was given" in err


# ------------------------------------------------------------------------------------------
# What may be replaced
# ------------------------------------------------------------------------------------------


def test_a_user_file_is_kept_unless_overwrite(encode_cli: EncodeCLI, weights_root: Path,
                                              image_files: list[str], tmp_path: Path) -> None:
    out = tmp_path / "x.nc"
    out.write_text("my notes")
    status, err = encode_cli("--out", str(out))
    assert status == 2 and "Traceback" not in err
    assert (f"{out} exists and is a file that nest-data did not write; give --overwrite "
            "(overwrite=True) to replace it, or choose another output") in err
    assert out.read_text() == "my notes"
    _no_leftovers(tmp_path, "x.nc")
    status, err = encode_cli("--out", str(out), "--overwrite")
    assert (status, err) == (0, "")
    np.testing.assert_array_equal(_responses(out), _expected(weights_root, image_files).values)
    _no_leftovers(tmp_path, "x.nc")


def test_a_foreign_zarr_store_is_kept_unless_overwrite(
        encode_cli: EncodeCLI, weights_root: Path, image_files: list[str], tmp_path: Path) -> None:
    import zarr

    out = tmp_path / "theirs.zarr"
    zarr.open_group(out, mode="w", zarr_format=3).create_array("mine", shape=(3,), dtype="i4")
    status, err = encode_cli("--out", str(out))
    assert status == 2 and "Traceback" not in err
    assert f"{out} exists and is a Zarr store that nest-data did not write; give --overwrite" in err
    assert "mine" in zarr.open_group(out, mode="r")
    status, err = encode_cli("--out", str(out), "--overwrite")
    assert (status, err) == (0, "")
    assert "mine" not in zarr.open_group(out, mode="r")
    np.testing.assert_array_equal(_responses(out), _expected(weights_root, image_files).values)
    _no_leftovers(tmp_path, "theirs.zarr")


def test_a_folder_that_is_not_zarr_is_never_replaced(encode_cli: EncodeCLI, tmp_path: Path) -> None:
    folder = tmp_path / "notes.zarr"
    folder.mkdir()
    (folder / "NOTES.txt").write_text("mine")
    (tmp_path / "dir.nc").mkdir()
    for out, what in ((folder, "is a folder that is not a Zarr store; nest-data never "
                               "deletes a folder of yours, even with --overwrite"),
                      (tmp_path / "dir.nc", "is a folder; a .nc output is a file")):
        for extra in ((), ("--overwrite",)):
            status, err = encode_cli("--out", str(out), *extra)
            assert status == 2 and f"{out} exists and {what}" in err
    assert (folder / "NOTES.txt").read_text() == "mine"
    _no_leftovers(folder, "NOTES.txt")


@pytest.mark.parametrize("name", ["r.nc", "r.zarr"])
def test_an_output_nest_data_wrote_is_replaced(encode_cli: EncodeCLI, weights_root: Path,
                                               image_files: list[str], tmp_path: Path,
                                               name: str) -> None:
    """As ``generate`` replaces its own store: running the command again refreshes it."""
    out = tmp_path / name
    assert encode_cli("--out", str(out), images=2) == (0, "")
    assert encode_cli("--out", str(out), images=3) == (0, "")
    np.testing.assert_array_equal(_responses(out),
                                  _expected(weights_root, image_files, 3).values)
    kwargs = {"engine": "zarr"} if out.suffix == ".zarr" else {}
    with xr.open_dataset(out, **kwargs) as ds:
        assert ds.attrs[WRITER_ATTR].startswith("nest-data ")
    _no_leftovers(tmp_path, name)


# ------------------------------------------------------------------------------------------
# A full disk
# ------------------------------------------------------------------------------------------


def _disk_full_after(monkeypatch: pytest.MonkeyPatch, n_files: int) -> None:
    """``os.fsync`` succeeds ``n_files`` times, then fails as a full disk does."""
    real = os.fsync
    calls = []

    def fsync(fd: int) -> None:
        calls.append(fd)
        if len(calls) > n_files:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize(("name", "written"), [("r.nc", 0), ("r.zarr", 2)])
def test_a_full_disk_is_named_and_leaves_nothing(encode_cli: EncodeCLI, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 name: str, written: int) -> None:
    out = tmp_path / "out" / name
    _disk_full_after(monkeypatch, written)  # Zarr: some files written, then the disk fills
    status, err = encode_cli("--out", str(out))
    assert status == 2 and "Traceback" not in err
    assert f"no space left on {out} (needs about 1 MB)" in err and "Free some space" in err
    _no_leftovers(out.parent)


@pytest.mark.parametrize("name", ["r.nc", "r.zarr"])
def test_a_full_disk_keeps_the_older_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            name: str) -> None:
    old = xr.DataArray(np.arange(6, dtype="f4").reshape(2, 3), dims=("image", "voxel"),
                       name="responses")
    out = write_output(old, tmp_path / name)
    bits = np.random.default_rng(0).integers(0, 2**32, (1000, 1000), dtype=np.uint32)
    values = bits.view(np.float32)  # random bits: 4 MB that no codec compresses
    new = xr.DataArray(values, dims=("image", "voxel"), name="responses")
    _disk_full_after(monkeypatch, 0)
    with pytest.raises(nest_data.NoSpaceError, match=r"no space left on .* \(needs about 4 MB\)"
                       ) as caught:
        write_output(new, out)
    assert isinstance(caught.value, OSError) and caught.value.errno == errno.ENOSPC
    np.testing.assert_array_equal(_responses(out), old.values)
    _no_leftovers(tmp_path, name)


# ------------------------------------------------------------------------------------------
# Where the weights are
# ------------------------------------------------------------------------------------------


def test_an_unreachable_location_is_not_a_missing_file(encode_cli: EncodeCLI, tmp_path: Path
                                                       ) -> None:
    status, err = encode_cli("--out", str(tmp_path / "r.nc"), location="http://127.0.0.1:1/x")
    assert status == 2 and "Traceback" not in err
    assert "model.json is missing" not in err
    assert "from http://127.0.0.1:1/x/weights/" in err
    assert "the server is unreachable or overloaded" in err
    assert "check the URL and your network" in err
    _no_leftovers(tmp_path)


def test_weights_over_http_and_a_missing_model_json(weights_root: Path, image_files: list[str]
                                                    ) -> None:
    with HTTPServer() as server:
        server.upload(weights_root)
        remote = nest_data.encode(image_files[:2], subject=1, roi="V1", location=server.url,
                                  cache=False)
        np.testing.assert_array_equal(remote.values,
                                      _expected(weights_root, image_files).values)
        with pytest.raises(nest_data.StoreNotFoundError,
                           match=r"no converted weights at .*/no-such-root/weights/.* "
                                 r"\(model.json is missing\)"):
            nest_data.encode(image_files[:1], subject=1, roi="V1", location=server.missing_url)


# ------------------------------------------------------------------------------------------
# The demo's arguments
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"n_images": 0}, "n_images=0: the demo builds 1 to 1000 images per image set; give a "
                      "whole number in that range (default 24)"),
    ({"n_images": 1001}, "n_images=1001: the demo builds 1 to 1000 images"),
    ({"n_images": 2.5}, "n_images=2.5: the demo builds 1 to 1000 images"),
    ({"n_images": True}, "n_images=True: the demo builds 1 to 1000 images"),
    ({"workers": 0}, "workers=0: give a positive number of conversion processes"),
    ({"storage_options": {"anon": True}}, "storage_options were given for the local dest"),
])
def test_build_demo_refuses_bad_arguments_before_writing(
        tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    dest = tmp_path / "demo"
    with pytest.raises(nest_data.InputError, match=re.escape(message)):
        nest_data.build_demo(dest=str(dest), show_progress=False, **kwargs)
    _no_leftovers(tmp_path)


def test_build_demo_refuses_a_file_as_dest(tmp_path: Path) -> None:
    dest = tmp_path / "demo"
    dest.write_text("mine")
    with pytest.raises(nest_data.TargetExistsError, match=f"the destination {dest} is a file, "
                                                          "not a folder"):
        nest_data.build_demo(dest=str(dest), n_images=1, show_progress=False)
    assert dest.read_text() == "mine"
    _no_leftovers(tmp_path, "demo")


def test_demo_command_refuses_bad_arguments_before_writing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("NEST_DATA_CACHE_DIR", str(tmp_path / "cache"))
    dest = tmp_path / "D"
    for argv in (["demo", "--n-images", "0", "--dest", str(dest)],
                 ["demo", "--rebuild", "--n-images", "-3"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "the demo builds 1 to 1000 images per image set" in err
        assert "images folder" not in err and "Traceback" not in err
    _no_leftovers(tmp_path)
