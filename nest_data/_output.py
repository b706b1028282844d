"""A command's output (a NetCDF file, a Zarr folder or a PNG), written atomically and safely.

``nest-data encode --out`` writes its responses here, ``dream`` and ``saliency`` their results
and their PNGs, under the rules that stores follow:

- the output appears only when complete: it is encoded in memory, written to a hidden
  temporary file or folder next to the target, and renamed into place, so a failure (a full
  disk, say) leaves nothing new behind and an older output untouched;
- an existing output that nest-data wrote (marked by the global attribute
  :data:`WRITER_ATTR`, a text chunk in a PNG) is replaced, as ``generate`` replaces its own
  stores; anything else (a user's file, a foreign Zarr store) only with ``overwrite=True``
  (``--overwrite``), and a folder that is not a Zarr store never;
- a missing parent folder is created, as writers create their destination root.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import os
import re
import shutil
import socket
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from nest_data._staging import make_root, no_space
from nest_data._storage import quiet_consolidated
from nest_data.errors import InputError, TargetExistsError

logger = logging.getLogger("nest_data")

__all__ = ["IMAGE_SUFFIXES", "SUFFIXES", "WRITER_ATTR", "check_output", "write_image",
           "write_output"]

#: What an output of arrays can be: a NetCDF file or a Zarr (v3) folder.
SUFFIXES = (".nc", ".zarr")
#: What an image output can be.
IMAGE_SUFFIXES = (".png",)
#: Global attribute that marks an output written by nest-data (its value names the writer).
WRITER_ATTR = "nest_data_writer"


def check_output(out: str | os.PathLike[str], *, overwrite: bool = False,
                 suffixes: tuple[str, ...] = SUFFIXES) -> Path:
    """Check, before any work, that ``out`` can be written; return it as a path.

    Creates a missing parent folder (and checks that it can be written to).

    Parameters
    ----------
    out : path
        A file ending in ``.nc`` or a folder ending in ``.zarr``.
    overwrite : bool
        Replace an existing output that nest-data did not write (a file, or a Zarr store).
    suffixes : tuple of str
        The endings allowed: :data:`SUFFIXES`, or :data:`IMAGE_SUFFIXES` for an image.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    InputError
        ``out`` does not end in one of ``suffixes``.
    TargetExistsError
        The parent folder cannot be created or written to, or something is at ``out`` that
        may not be replaced; the message says what and how to proceed.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> check_output(folder / "new" / "r.nc").parent.is_dir()
    True
    >>> (folder / "notes.nc").write_text("mine")
    4
    >>> check_output(folder / "notes.nc")
    Traceback (most recent call last):
    ...
    nest_data.errors.TargetExistsError: .../notes.nc exists and is a file that nest-data ...
    """
    path = Path(out)
    if path.suffix not in suffixes:
        valid = ("a file ending in .nc (NetCDF) or a folder ending in .zarr"
                 if suffixes == SUFFIXES else "a file ending in " + " or ".join(suffixes))
        raise InputError(f"output {os.fspath(out)!r}: give {valid}")
    make_root(path.parent)
    _check_replaceable(path, overwrite)
    return path


def write_output(da: xr.DataArray | xr.DataTree, out: str | os.PathLike[str], *,
                 overwrite: bool = False) -> Path:
    """Write a labelled array or tree (``encode``'s, ``dream``'s) to a NetCDF file or Zarr.

    The output is encoded in memory first (about the array's size again), then written next
    to ``out`` under a hidden temporary name and renamed into place: it is visible only when
    complete.  Attributes NetCDF cannot hold (dicts, nested lists) are written as JSON text.

    Parameters
    ----------
    da : xarray.DataArray or xarray.DataTree
        The array (its name becomes the variable's name, default ``responses``), or a tree
        such as :func:`nest_data.dream` returns (one NetCDF group or Zarr group per node).
    out : path
        ``FILE.nc`` or ``FOLDER.zarr`` (Zarr format 3, consolidated metadata).
    overwrite : bool
        Replace an existing output that nest-data did not write; its own outputs are
        always replaced.

    Returns
    -------
    pathlib.Path
        ``out``.

    Raises
    ------
    InputError, TargetExistsError
        As :func:`check_output`.
    NoSpaceError
        The disk (or quota) is full; nothing was left behind and an older output is intact.

    Examples
    --------
    >>> import tempfile, pathlib, nest_data, xarray as xr
    >>> da = nest_data.open(imageset="things", subject=1, roi="V1", location="demo")
    >>> out = write_output(da.isel(image=[0, 1]), pathlib.Path(tempfile.mkdtemp()) / "r.nc")
    >>> with xr.open_dataset(out) as ds:
    ...     ds.responses.shape
    (2, 1350)
    """
    path = check_output(out, overwrite=overwrite)
    _place(_encoded(da, path.suffix), path, overwrite)
    return path


def write_image(image: Any, out: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write an image as a PNG, under the rules of :func:`write_output`.

    The PNG carries a text chunk :data:`WRITER_ATTR` naming nest-data, so that a later run
    replaces it and nothing else.

    Parameters
    ----------
    image : PIL.Image.Image or array
        A PIL image, or uint8 pixels ``(H, W, 3)`` (or ``(H, W)``).
    out : path
        A file ending in ``.png``.
    overwrite : bool
        Replace an existing file that nest-data did not write.

    Returns
    -------
    pathlib.Path
        ``out``.

    Raises
    ------
    InputError, TargetExistsError
        As :func:`check_output`.
    NoSpaceError
        As :func:`write_output`.

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np
    >>> pixels = np.zeros((8, 8, 3), dtype=np.uint8)
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "black.png"
    >>> write_image(pixels, out).stat().st_size > 0
    True
    >>> write_image(pixels, out).name  # its own output: replaced
    'black.png'
    """
    from PIL import Image, PngImagePlugin

    from nest_data import __version__

    path = check_output(out, overwrite=overwrite, suffixes=IMAGE_SUFFIXES)
    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image))
    info = PngImagePlugin.PngInfo()
    info.add_text(WRITER_ATTR, f"nest-data {__version__}")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    _place({"": buffer.getbuffer()}, path, overwrite)
    return path


#: This host's name as temporary outputs carry it (letters, digits and ``-`` only).
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:32] or "host"


def _place(files: dict[str, memoryview], path: Path, overwrite: bool) -> None:
    """Write an output's files under a hidden temporary name, then rename them into place.

    The temporary name holds this host and process (``.<name>.<host>-<pid>-<random>
    .nest-data-tmp``), so the temporary files of a killed writer are removed by the next
    write of the same output on that host.
    """
    for stale in _stale_temps(path):
        logger.info("removing %s, left by a writer that was killed", stale)
        _remove(stale)
    temp = path.parent / f".{path.name}.{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:12]}.nest-data-tmp"
    try:
        with no_space(path, needs=sum(data.nbytes for data in files.values())):
            for name, data in files.items():
                _write_file(temp / name if path.suffix == ".zarr" else temp, data)
            _check_replaceable(path, overwrite)  # again: something may have appeared since
            _replace(temp, path)
    finally:
        _remove(temp)
    logger.info("wrote %s", path)


def _encoded(da: xr.DataArray | xr.DataTree, suffix: str) -> dict[str, memoryview]:
    """The output's files (path relative to a ``.zarr`` folder, or ``""`` for a file)."""
    from nest_data import __version__

    data: xr.Dataset | xr.DataTree
    if isinstance(da, xr.DataTree):
        data = da.copy()
        for node in data.subtree:
            node.dataset = _portable(node.to_dataset(inherit=False).drop_encoding(), suffix)
    else:  # the source's encoding is not the output's
        data = _portable(da.to_dataset(name=da.name or "responses").drop_encoding(), suffix)
    data.attrs[WRITER_ATTR] = f"nest-data {__version__}"
    if suffix == ".nc":
        return {"": memoryview(data.to_netcdf()).cast("B")}
    from zarr.storage import MemoryStore

    objects: dict[str, Any] = {}
    with quiet_consolidated():
        data.to_zarr(MemoryStore(objects), mode="w-", zarr_format=3, consolidated=True)
    return {key: memoryview(buffer.as_buffer_like()).cast("B")
            for key, buffer in objects.items()}


def _portable(ds: xr.Dataset, suffix: str) -> xr.Dataset:
    """A dataset the format holds portably: for Zarr, text of fixed width as variable-length
    strings (Zarr v3 specifies those only); for NetCDF, native byte order and attributes it
    can store."""
    if suffix != ".nc":
        fixed = [name for name, variable in ds.variables.items() if variable.dtype.kind == "U"]
        return ds.assign_coords({name: ds[name].astype(object) for name in fixed
                                 if name in ds.coords}).assign(
            {name: ds[name].astype(object) for name in fixed if name in ds.data_vars})
    for name, variable in ds.variables.items():
        if variable.dtype.byteorder in "<>":  # netCDF4 writes native order; say so
            native = variable.dtype.newbyteorder("=")
            ds[name] = variable.copy(data=variable.values.astype(native, copy=False))
        ds[name].attrs = {k: _netcdf_attr(v) for k, v in variable.attrs.items()}
    ds.attrs = {k: _netcdf_attr(v) for k, v in ds.attrs.items()}
    return ds


def _netcdf_attr(value: Any) -> Any:
    """NetCDF keeps numbers, strings and 1-D numeric arrays as attributes; the rest as JSON."""
    array = np.asarray(value, dtype=object) if not isinstance(value, dict) else None
    if isinstance(value, (str, int, float)) or (
            array is not None and array.ndim == 1 and all(
                isinstance(v, (int, float, np.number)) for v in array)):
        return value
    return json.dumps(value, default=lambda v: np.asarray(v).tolist())


def _write_file(path: Path, data: memoryview) -> None:
    """Write and flush one new file to the disk (a full disk surfaces here, not later)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _replace(temp: Path, path: Path) -> None:
    """Rename a complete file or folder into place; an older folder is moved aside first."""
    if not temp.is_dir() or not path.is_dir():
        os.replace(temp, path)
        return
    old = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.nest-data-old"
    os.replace(path, old)
    os.replace(temp, path)
    _remove(old)


def _stale_temps(path: Path) -> list[Path]:
    """Temporary files of ``path`` that a process of this host, no longer running, left."""
    pattern = re.compile(re.escape(f".{path.name}.{_HOST}-") + r"(\d+)-[0-9a-f]{12}"
                         + re.escape(".nest-data-tmp"))
    stale = []
    for item in path.parent.glob(f".{glob.escape(path.name)}.*.nest-data-tmp"):
        found = pattern.fullmatch(item.name)
        if found and not _running(int(found.group(1))):
            stale.append(item)
    return stale


def _running(pid: int) -> bool:
    """Whether a process ``pid`` runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _check_replaceable(path: Path, overwrite: bool) -> None:
    """Raise unless ``path`` is free, an output nest-data wrote, or replaceable with overwrite."""
    if not (path.exists() or path.is_symlink()):
        return
    folder = path.is_dir() and not path.is_symlink()
    if folder != (path.suffix == ".zarr"):
        kind = "a folder" if folder else "a link" if path.is_symlink() else "a file"
        raise TargetExistsError(f"{path} exists and is {kind}; a {path.suffix} output is "
                                f"{'a folder' if path.suffix == '.zarr' else 'a file'}. Move "
                                "it away, or choose another output")
    writer = _writer(path)
    if writer is not None:
        logger.info("replacing %s (written by %s)", path, writer)
        return
    if folder and not (path / "zarr.json").is_file():
        raise TargetExistsError(f"{path} exists and is a folder that is not a Zarr store; "
                                "nest-data never deletes a folder of yours, even with "
                                "--overwrite. Move it away, or choose another output")
    if overwrite:
        logger.info("replacing %s (overwrite was given)", path)
        return
    kind = "a Zarr store" if folder else "a file"
    raise TargetExistsError(f"{path} exists and is {kind} that nest-data did not write; give "
                            "--overwrite (overwrite=True) to replace it, or choose another "
                            "output")


def _writer(path: Path) -> str | None:
    """The :data:`WRITER_ATTR` of an existing output, or None (not written by nest-data)."""
    try:
        if path.suffix in IMAGE_SUFFIXES:
            from PIL import Image

            with Image.open(path) as image:
                attrs = dict(getattr(image, "text", {}))
        elif path.is_dir():
            attrs = json.loads((path / "zarr.json").read_bytes()).get("attributes", {})
        else:
            with xr.open_dataset(path, decode_cf=False) as ds:
                attrs = dict(ds.attrs)
        writer = attrs.get(WRITER_ATTR)
    except Exception:  # unreadable, or not NetCDF/Zarr at all: not an output of ours
        return None
    return writer if isinstance(writer, str) and writer.startswith("nest-data") else None
