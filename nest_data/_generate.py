"""Encoding a whole image set into a new store, chunk by chunk on dask, resumably.

``generate`` turns a folder of images, or a Zarr array of images, into a nest-data store of
the standard layout: the same ``responses`` array, coordinates and checksums as a converted
NED entry, under the catalog's path for the given image set name.  One dask task encodes one
stored chunk of images and writes it straight into a staging folder, then records it as done
in a small marker file (written atomically).  A run that is interrupted leaves the staging
folder, whose name is derived from the job (destination, weights, images, chunking); running
the same job again encodes only the chunks without a marker, then checksums the store and
renames it into place.  Nothing in the output depends on when or in how many attempts it was
written, so a resumed run ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import numpy as np
import zarr

from nest_data import _config
from nest_data._catalog import Catalog, Entry
from nest_data._catalog import catalog as default_catalog
from nest_data._catalog.schema import is_valid_name
from nest_data._digest import bytes_digest
from nest_data._encode import Encoder, check_alone
from nest_data._format import DATA_VAR, EntryData, array_digest, chunk_rows, read_store_attrs
from nest_data._images import as_images
from nest_data._locks import writer_lock
from nest_data._models import EncoderSource, torch_device
from nest_data._progress import compute
from nest_data._redact import redact_url
from nest_data._staging import (
    STAGING_DIR,
    check_replaceable,
    clean_staging,
    commit,
    make_root,
    no_space,
    store_exists,
)
from nest_data._surface import ROI_AUX_PREFIX, roi_positions
from nest_data._urls import is_local, join, local_path
from nest_data._write import begin_stage, finish_stage, row_nbytes, scan_rows, write_rows
from nest_data.errors import InputError

logger = logging.getLogger("nest_data")

__all__ = ["IMAGE_SUFFIXES", "generate"]

#: File name suffixes read as images from a folder (case-insensitive).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
#: Vertices per stored chunk of a surface store: 4,096 x 512 images = 8 MB.
VERTEX_CHUNK = 4096
_STATE = "job.state"  # in the progress folder; its presence means the skeleton is staged


# ------------------------------------------------------------------------------ image sources


@dataclass(frozen=True)
class _Images:
    """Where a job's images are: files in a folder, or a Zarr array; picklable for tasks."""

    kind: str  # "folder" or "zarr"
    url: str
    names: tuple[str, ...] = ()  # folder: relative paths, in row order
    array_path: str = ""  # zarr: path of the image array inside the group
    channels_last: bool = True

    def _array(self) -> zarr.Array:
        node = zarr.open(self.url, mode="r", path=self.array_path or None)
        if not isinstance(node, zarr.Array):
            raise InputError(f"{self.url}: {self.array_path or 'the root'} is a Zarr group; "
                             "give the path of the uint8 image array inside it")
        return node

    def read(self, start: int, stop: int) -> list[np.ndarray]:
        """Images ``start:stop`` as square uint8 ``(3, S, S)`` arrays."""
        if self.kind == "folder":
            return as_images([os.path.join(self.url, n) for n in self.names[start:stop]])
        block = np.asarray(self._array()[start:stop])
        return as_images(block if self.channels_last else block.transpose(0, 2, 3, 1))


def _open_images(source: str | os.PathLike[str]
                 ) -> tuple[_Images, np.ndarray, dict[str, Any], dict[str, np.ndarray]]:
    """The image source, the image ids, a fingerprint of the source, and further labels
    per image (``concept``: the folder of each image, when every image lies in one)."""
    if not isinstance(source, (str, os.PathLike)):
        raise InputError(f"images= is a {type(source).__name__}; generate reads a folder of "
                         "images or a Zarr array/group of images by its path or URL (to "
                         "encode images in memory, use nest_data.encode)")
    path = os.fspath(source)
    if is_local(path) and Path(local_path(path)).is_dir() and not _is_zarr(path):
        folder = Path(local_path(path))
        files = sorted(p for p in folder.rglob("*")
                       if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise InputError(f"{folder} holds no image files ({', '.join(IMAGE_SUFFIXES)}); "
                             "give a folder of images or a Zarr array of uint8 images")
        names = tuple(p.relative_to(folder).as_posix() for p in files)
        stats = [p.stat() for p in files]
        listing = [[n, st.st_size, st.st_mtime_ns] for n, st in zip(names, stats, strict=True)]
        fingerprint: dict[str, Any] = {
            "kind": "folder", "path": folder.as_posix(), "n_images": len(names),
            "listing_sha256": bytes_digest(json.dumps(listing).encode())}
        labels: dict[str, np.ndarray] = {}
        if all("/" in n for n in names):  # THINGS' layout: concept/image.jpg
            labels["concept"] = np.asarray([n.rsplit("/", 2)[-2] for n in names], dtype=object)
            fingerprint["labels"] = sorted(labels)
        return (_Images("folder", folder.as_posix(), names), np.asarray(names, dtype=object),
                fingerprint, labels)
    try:
        node = zarr.open(path, mode="r")
    except Exception as exc:
        raise InputError(f"{path} is neither a folder of images nor a Zarr array or group "
                         f"of images ({type(exc).__name__}: {exc})") from exc
    array_path, ids = "", None
    if isinstance(node, zarr.Group):
        if "images" not in node:
            raise InputError(f"the Zarr group {path} has no 'images' array (it has "
                             f"{sorted(node.keys())}); write images (n, H, W, 3) uint8 there")
        array_path = "images"
        if "image_id" in node:
            id_array = node["image_id"]
            if not isinstance(id_array, zarr.Array):
                raise InputError(f"{path}/image_id is a group; write the image labels there "
                                 "as an array of strings, one per image")
            ids = np.asarray(id_array[...], dtype=object)
        node = node["images"]
    if not isinstance(node, zarr.Array):
        raise InputError(f"{path}: 'images' is a group; write the images there as one uint8 "
                         "array (n, H, W, 3) or (n, 3, H, W)")
    shape = tuple(int(s) for s in node.shape)
    if node.dtype.kind not in "iu" or len(shape) != 4 or 3 not in (shape[1], shape[3]):
        raise InputError(f"{path}: images are {node.dtype} {shape}; expected uint8 "
                         "(n, H, W, 3) or (n, 3, H, W), or integers of any integer dtype in "
                         "0..255 so shaped")
    n = shape[0]
    if ids is None:
        ids = np.asarray([f"{i:06d}" for i in range(n)], dtype=object)
    elif len(ids) != n:
        raise InputError(f"{path}: image_id has {len(ids)} values for {n} images")
    fingerprint = {"kind": "zarr", "path": path, "shape": list(shape),
                   "metadata_sha256": bytes_digest(json.dumps(node.metadata.to_dict(),
                                                              sort_keys=True,
                                                              default=str).encode())}
    return (_Images("zarr", path, array_path=array_path, channels_last=shape[3] == 3), ids,
            fingerprint, {})


def _is_zarr(path: str) -> bool:
    return (Path(local_path(path)) / "zarr.json").is_file()


# ------------------------------------------------------------------------------ the job


@dataclass(frozen=True)
class _Job:
    """Everything a task needs (picklable): encoder, images, staging folder, chunking."""

    source: EncoderSource
    images: _Images
    stage: str
    progress: str
    rows: int
    n_images: int
    batch_size: int
    device: str


def _encode_chunk(job: _Job, index: int) -> dict[str, Any]:
    """Encode stored chunk ``index`` into the staging folder; then mark it done.

    A chunk already marked done is left as it is: dask runs a task again when the worker
    holding its result is lost, and rewriting a finished chunk would open a window in which
    a marked chunk is incomplete on disk (a client killed then would leave it so).
    """
    done = Path(job.progress) / f"{index}.json"
    if done.is_file():
        marker: dict[str, Any] = json.loads(done.read_text())
        return marker
    start, stop = index * job.rows, min((index + 1) * job.rows, job.n_images)
    encoder = job.source.load()
    device = torch_device(job.device)
    encoder.to(device)
    images = job.images.read(start, stop)
    values = np.empty((stop - start, *encoder.row_shape), dtype=np.float32)
    for a in range(0, len(images), job.batch_size):
        values[a:a + job.batch_size] = encoder(images[a:a + job.batch_size], device)
    if encoder.order is not None:  # surface stores keep vertices in ROI order
        values = np.ascontiguousarray(values[:, encoder.order])
    write_rows(Path(job.stage), start, values)
    marker = {"chunk": index, "rows": [start, stop], "sha256": array_digest(values),
              "nan_count": int(np.count_nonzero(np.isnan(values)))}
    tmp = Path(job.progress) / f".tmp-{uuid.uuid4().hex}"
    tmp.write_text(json.dumps(marker))
    os.replace(tmp, done)  # the chunk is complete on disk
    return marker


def _run(job: _Job, todo: list[int], client: Any) -> None:
    tasks = [dask.delayed(_encode_chunk, pure=False)(job, i) for i in todo]
    # Without a cluster, tasks run one after another: torch already uses every core, and
    # threads would run several models at once on the same cores.
    compute(*tasks, desc="generating", client=client,
            scheduler="threads", num_workers=1)


@_config.progress_option
def generate(
    images: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    imageset: str,
    subject: int | str | None = None,
    roi: str | None = None,
    modality: str = "fmri",
    train_dataset: str | None = None,
    model: str | None = None,
    location: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    backbone: str | os.PathLike[str] | None = None,
    chunk_images: int | None = None,
    chunk_vertices: int = VERTEX_CHUNK,
    batch_size: int = 16,
    device: str | None = None,
    client: Any = None,
    show_progress: bool | None = None,
    catalog: Catalog | None = None,
    encoder: Encoder | None = None,
) -> str:
    """Encode a whole image set into a new store of the standard layout, on dask.

    Resumable: a run that stops (killed, out of memory, a failed task) leaves its finished
    chunks in a staging folder; calling again with the same arguments encodes only the
    rest.  The job is recognised by the store's path, the weights' SHA-256, the chunking
    and the images (a folder: the files' names, sizes and modification times; a Zarr
    array: its metadata), so changing any of these starts afresh.  Running again after
    success does nothing.

    Parameters
    ----------
    images : path or URL
        A folder of image files (searched recursively, in sorted order of their relative
        paths, which become the ``image_id`` labels; when every image lies in a subfolder,
        as THINGS' ``concept/image.jpg``, the subfolder's name is the ``concept`` label), or
        a Zarr array of images ``(n, H, W, 3)`` or ``(n, 3, H, W)`` with integer values in
        0..255 (uint8 or any integer dtype), or a Zarr group holding such an array as
        ``images`` (and optionally the labels as ``image_id``).
    dest : path or URL
        Root to write the store into, at the catalog's path for ``imageset``.
    imageset : str
        Name of the new image set (e.g. ``"my_stimuli"``): letters, digits and ``_-.+``.
        It is part of the store's path and keys: the store then opens by key at ``dest``,
        ``nest_data.open(imageset="my_stimuli", subject=..., location=dest)``, and
        ``nest_data.catalog().search(location=dest)`` lists it (the location's index
        names it; see :meth:`nest_data.Catalog.at`).
    subject, roi, modality, train_dataset, model, location, storage_options, backbone
        The encoder, as for :func:`nest_data.encode` (or ``encoder=``).  The fsaverage encoder
        (``train_dataset="nsd_fsaverage"``) always writes the whole surface, and ROIs are
        selected when the store is opened (``nest_data.open(..., roi="FFA-1")``), so it
        takes no ``roi``.
    chunk_images : int, optional
        Images per stored chunk, which is also one dask task (default: about 8 MB of
        responses, as for converted stores).
    chunk_vertices : int
        Surface stores only: vertices per stored chunk (stores keep vertices in ROI order,
        so one ROI reads a few vertex chunks).
    batch_size : int
        Images per forward pass inside a task.
    device : str, optional
        ``"auto"``, ``"cpu"`` or ``"cuda"``, on the machine that runs each task (default:
        the device of ``encoder``, else ``"auto"``).
    client : distributed.Client, optional
        Run the tasks on this cluster (default: the active client if there is one, else one
        task at a time in this process).  Workers must see ``dest``'s staging folder (for a
        remote ``dest``: ``<cache dir>/staging``) and the images.
    show_progress : bool, optional
        Progress bar over chunks.
    catalog : Catalog, optional
        The catalog that resolves the keys (default: the built-in one).
    encoder : Encoder, optional
        An encoder loaded by :func:`nest_data.encoder`, instead of the keys (tasks in this
        process use it; workers of a cluster load the same weights once each).

    Returns
    -------
    str
        The URL of the new store; open it with :func:`nest_data.open_store`.

    Raises
    ------
    InputError
        No images, unreadable images, or bad arguments (the message says what is valid).
    StoreNotFoundError
        No converted weights for the encoder.
    NoSpaceError
        ``dest`` (or the local staging folder of a remote ``dest``) ran out of space;
        nothing half-written is visible, and a rerun resumes with the finished chunks.
    WriterLockError
        Another process is writing to the local ``dest`` (one writer at a time per
        destination); the message names it.

    Examples
    --------
    >>> import tempfile, nest_data
    >>> from nest_data.converters.weights import convert_weights
    >>> from nest_data.synthetic import test_images, write_fwrf_weights, write_image_folder
    >>> nest, root, folder = tempfile.mkdtemp(), tempfile.mkdtemp(), tempfile.mkdtemp()
    >>> _ = write_fwrf_weights(nest, 1, "V1", n_voxels=5)   # NEST's files, miniature
    >>> _ = convert_weights(nest, root, trust_pickles=True)
    >>> _ = write_image_folder(folder, test_images(6, 64))
    >>> url = nest_data.generate(folder, root, imageset="mine", subject=1, roi="V1",
    ...                          location=root, chunk_images=4)
    >>> da = nest_data.open_store(url)
    >>> da.sizes, da.chunks[0], str(da.image_id[0].values)
    (Frozen({'image': 6, 'voxel': 5}), (4, 2), 'image_00000.png')

    Bad input is refused before anything is written:

    >>> nest_data.generate(tempfile.mkdtemp(), root, imageset="mine", subject=1, roi="V1")
    Traceback (most recent call last):
    ...
    nest_data.errors.InputError: /tmp/... holds no image files (.png, .jpg, ...
    """
    if batch_size < 1 or (chunk_images is not None and chunk_images < 1):
        raise InputError(f"batch_size ({batch_size}) and chunk_images ({chunk_images}) must "
                         "be positive numbers of images")
    if not isinstance(imageset, str) or not is_valid_name(imageset):
        raise InputError(f"imageset={imageset!r}: give a short name of letters, digits and "
                         "'_', '-', '.', '+' (no '/', no '..', no spaces), such as "
                         "'my_stimuli': it becomes part of the store's path and its keys")
    reader, ids, fingerprint, labels = _open_images(images)  # first: fail fast on bad images
    if chunk_vertices < 1:
        raise InputError(f"chunk_vertices must be a positive number, got {chunk_vertices}")
    cat = catalog or default_catalog()
    if encoder is not None:
        check_alone("generate()", subject=subject, roi=roi, train_dataset=train_dataset,
                    model=model, location=location, backbone=backbone,
                    modality=None if modality == "fmri" else modality)
        encoder.check_unselected("generate()")
        if encoder.source.surface and encoder.roi is not None:
            raise InputError(f"generate writes the whole surface, and this encoder keeps the "
                             f"ROI {encoder.roi!r}; load it without roi= "
                             "(nest_data.encoder(train_dataset='nsd_fsaverage', subject=...)) "
                             "and select the ROI when opening the store")
        keys = encoder.keys
        modality, train_dataset, model = keys["modality"], keys["train_dataset"], keys["model"]
        subject, roi = keys["subject"], encoder.roi
    elif subject is None:
        raise InputError("give subject= (with roi=, modality=... as needed) or encoder= "
                         "(from nest_data.encoder(...))")
    device = device or (encoder.device if encoder is not None else "auto")
    spec, _ = cat.resolve_weights(modality=modality, train_dataset=train_dataset, model=model,
                                  subject=subject, roi=roi)
    if spec.surface and roi is not None:
        raise InputError(f"generate writes the whole surface for {spec.name} (roi={roi!r} "
                         "given); drop roi= and select the ROI when opening the store: "
                         "nest_data.open_store(url, roi=...) or nest_data.open(..., roi=...)")
    source = encoder.source if encoder is not None else EncoderSource.resolve(
        subject=subject, roi=roi, modality=modality, train_dataset=train_dataset, model=model,
        location=location, storage_options=storage_options, backbone=backbone, catalog=cat)
    loaded = encoder.loaded if encoder is not None else source.load()
    entry = Entry.of(spec, imageset, int(loaded.keys["subject"]), loaded.keys.get("roi"))
    n = len(ids)
    data = _entry_data(entry, loaded, ids, labels, fingerprint, source, chunk_vertices)
    rows = chunk_images or chunk_rows(row_nbytes(data), n)
    job_id = bytes_digest(json.dumps([entry.path, loaded.digest, fingerprint, rows, str(dest),
                                      data.chunks], sort_keys=True).encode()
                          ).removeprefix("sha256:")[:16]
    url = join(dest, entry.path)
    make_root(dest)
    check_replaceable(dest, entry.path, storage_options)  # before any work, not at the end
    needs = n * int(np.prod(data.shape[1:], dtype=np.int64)) * np.dtype(data.dtype).itemsize
    with writer_lock(dest, "generate"), no_space(dest, needs):
        clean_staging(dest)  # stages of killed writers; resumable jobs are kept
        stage, progress = _stage_folders(dest, job_id, entry.path)
        _drop_other_jobs(progress.parent, entry.path, job_id)
        if store_exists(dest, entry.path, storage_options) and _fingerprint(
                url, storage_options) == data.fingerprint:
            logger.info("%s is up to date", url)
            shutil.rmtree(stage, ignore_errors=True)
            shutil.rmtree(progress, ignore_errors=True)
            return url
        state = {"job": job_id, "store": entry.path, "dest": str(dest), "n_images": n,
                 "rows": rows}
        state_file = progress / _STATE
        if not (state_file.is_file() and json.loads(state_file.read_text()) == state):
            shutil.rmtree(stage, ignore_errors=True)  # a fresh job, or one killed staging
            shutil.rmtree(progress, ignore_errors=True)
        progress.mkdir(parents=True, exist_ok=True)
        memory = begin_stage(data, stage, rows)
        state_file.write_text(json.dumps(state))
        n_chunks = -(-n // rows)
        done = {int(p.stem) for p in progress.glob("*.json")}
        todo = [i for i in range(n_chunks) if i not in done]
        logger.info("generating %s: %d images in %d chunks (%d done before)", entry.label, n,
                    n_chunks, len(done))
        job = _Job(source, reader, stage.as_posix(), progress.as_posix(), rows, n, batch_size,
                   device)
        _run(job, todo, client)
        responses = zarr.open_array(stage, path=DATA_VAR, mode="r", zarr_format=3)
        digest, nan_count = scan_rows(responses, rows)
        finish_stage(memory, stage, data, rows, digest, nan_count)
        commit(stage, dest, entry.path, storage_options)
        shutil.rmtree(stage, ignore_errors=True)
        shutil.rmtree(progress, ignore_errors=True)
    logger.info("wrote %s", url)
    return url


def _fingerprint(url: str, storage_options: Mapping[str, Any] | None) -> Any:
    from nest_data._storage import make_store

    store = make_store(url, dict(storage_options or {}), read_only=True)
    return read_store_attrs(store).get("fingerprint")


def _stage_folders(dest: str | os.PathLike[str], job_id: str, path: str) -> tuple[Path, Path]:
    """The job's staging folder (named after the job, so a rerun finds it) and its markers."""
    parent = (Path(local_path(dest)) / STAGING_DIR if is_local(dest)
              else _config.cache_dir() / "staging")
    name = f"generate-{job_id}-{Path(path).name}"
    return parent / name, parent / f"{name}.progress"


def _drop_other_jobs(parent: Path, path: str, job_id: str) -> None:
    """Remove the unfinished jobs of the store at ``path`` other than ``job_id``: jobs of
    the same store with other images, weights or chunking, which no rerun resumes."""
    for state_file in parent.glob(f"generate-*.progress/{_STATE}"):
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(state, dict) and state.get("store") == path and state.get("job") != job_id:
            logger.info("removing the unfinished job %s of %s, made with other arguments",
                        state.get("job"), path)
            shutil.rmtree(parent / state_file.parent.name.removesuffix(".progress"),
                          ignore_errors=True)
            shutil.rmtree(state_file.parent, ignore_errors=True)


def _entry_data(entry: Entry, encoder: Any, ids: np.ndarray, labels: dict[str, np.ndarray],
                fingerprint: dict[str, Any], source: EncoderSource, chunk_vertices: int
                ) -> EntryData:
    n = len(ids)
    coords: dict[str, tuple[tuple[str, ...], np.ndarray, dict[str, Any]]] = {
        "image": (("image",), np.arange(n, dtype=np.int64),
                  {"description": f"row index into the {entry.imageset} image set"}),
        "image_id": (("image",), np.asarray(ids, dtype=object),
                     {"description": "file path relative to the image folder, or the image "
                                     "array's image_id"}),
    }
    if "concept" in labels:
        coords["concept"] = (("image",), labels["concept"], {
            "description": "the folder holding the image (THINGS' layout: concept/image.jpg)"})
    coords.update({name: (dims, values, {}) for name, (dims, values) in encoder.coords.items()})
    aux: dict[str, np.ndarray] = {}
    chunks = None
    if encoder.order is not None:  # a surface: vertices in ROI order, chunked along vertex
        coords.update({name: (dims, values[encoder.order], attrs)
                       for name, (dims, values, attrs) in coords.items() if dims == ("vertex",)})
        aux = {f"{ROI_AUX_PREFIX}{name}": roi_positions(encoder.order, vertices)
               for name, vertices in encoder.rois.items()}
        chunks = (min(chunk_vertices, int(encoder.row_shape[0])),)
    attrs = {k: v for k, v in entry.key.items() if v is not None}
    attrs.update({k: v for k, v in encoder.attrs.items() if k not in attrs})
    attrs["title"] = f"NEST in silico {entry.modality} responses: {entry.label}"
    from nest_data import __version__

    attrs["provenance"] = {
        "generator": f"nest-data {__version__} (nest_data.generate)",
        "images": fingerprint,
        "weights": redact_url(source.weights_url),
        "backbone": redact_url(source.backbone_url) if source.backbone_url else None,
        "encoder_sha256": encoder.digest,
        "note": "no creation time is recorded, so a resumed run is bit-identical to an "
                "uninterrupted one",
    }

    def never(start: int, stop: int) -> np.ndarray:
        raise AssertionError("generate writes responses from dask tasks")

    return EntryData(dims=encoder.dims, shape=(n, *encoder.row_shape), read_rows=never,
                     coords=coords, attrs=attrs, keys=entry.key, aux=aux, chunks=chunks,
                     fingerprint={"images": fingerprint, "encoder_sha256": encoder.digest})
