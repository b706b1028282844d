"""Converting NED's pre-generated in silico responses (HDF5 + pickled .npy) to Zarr stores."""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import logging
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from nest_data import _config
from nest_data._catalog import Catalog, Entry
from nest_data._catalog import catalog as default_catalog
from nest_data._digest import file_digest
from nest_data._format import EntryData, read_store_attrs
from nest_data._parallel import run_jobs
from nest_data._staging import clean_staging, make_root, store_exists
from nest_data._storage import (
    is_local,
    join,
    local_path,
    make_store,
    validate_storage_options,
)
from nest_data._verify import verify_store
from nest_data._write import write_entry
from nest_data.converters._meta import (
    eeg_labels,
    fmri_voxel_labels,
    meta_block,
    meta_field,
    meta_index,
    meta_lookup,
)
from nest_data.converters._pickle import load_npy_dict
from nest_data.errors import (
    ConversionError,
    NestDataError,
    SourceFormatError,
    StoreNotFoundError,
)
from nest_data.synthetic import NED_ROOT_NAMES

logger = logging.getLogger("nest_data")

DATASET = "synthetic_neural_responses"
_FOLDER_RE = re.compile(
    r"^modality-(?P<modality>[^/]+)/train_dataset-(?P<train_dataset>[^/]+)/model-(?P<model>[^/]+)"
    r"/imageset-(?P<imageset>[^/]+)$"
)
# NED's file names since 2024-05-26, and before (NED commit cbedc74 renamed them).
_NAME_RE = re.compile(r"^synthetic_neural_responses_sub-(?P<subject>\d+)(?:_roi-(?P<roi>.+))?\.h5$")
_OLD_NAME_RE = re.compile(
    r"^synthetic_neural_responses_training_dataset-(?P<train_dataset>.+?)_model-(?P<model>.+?)"
    r"_imageset-(?P<imageset>.+?)_sub-(?P<subject>\d+)(?:_roi-(?P<roi>.+))?\.h5$"
)

__all__ = ["ConversionReport", "SourceEntry", "convert_ned", "discover_ned"]


@dataclass(frozen=True)
class SourceEntry:
    """One NED entry: its catalog entry and its two source files."""

    entry: Entry
    h5: Path
    npy: Path


@dataclass
class ConversionReport:
    """What :func:`convert_ned` did: entries converted, skipped (already complete), failed.

    Entries are listed by label, in sorted order.
    """

    converted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return (f"{len(self.converted)} converted, {len(self.skipped)} already complete, "
                f"{len(self.failed)} failed")


def discover_ned(
    src: str | os.PathLike[str], *, catalog: Catalog | None = None, **keys: Any
) -> list[SourceEntry]:
    """Find the entries of a NED folder, optionally filtered by catalog keys.

    ``src`` may be the folder that holds ``pregenerated_insilico_neural_responses/`` or
    ``synthetic_neural_responses/`` (NED used both names), or one of those folders itself.
    Files keep NED's current names (``synthetic_neural_responses_sub-01_roi-V1.h5``) or the
    names NED gave them before 2024-05-26
    (``synthetic_neural_responses_training_dataset-nsd_model-fwrf_imageset-nsd_sub-01_roi-V1.h5``,
    metadata ``synthetic_neural_responses_metadata_training_dataset-...npy``).

    Parameters
    ----------
    src : path
        The NED folder.
    catalog : Catalog, optional
        Catalog that validates keys and gives store paths.
    **keys
        Filters: ``modality, train_dataset, model, imageset, subject, roi`` (scalars or lists).

    Returns
    -------
    list of SourceEntry

    Raises
    ------
    ConversionError
        No file matches.
    SourceFormatError
        An old-style file name disagrees with its folder, or one folder holds the same entry
        under both names.

    Examples
    --------
    >>> import tempfile
    >>> from nest_data.synthetic import write_ned
    >>> from nest_data.converters import discover_ned
    >>> ned = write_ned(tempfile.mkdtemp(), modalities=["eeg"], subjects=[1, 2],
    ...                 imagesets=["things"], n_images=4, show_progress=False)
    >>> [s.entry.subject for s in discover_ned(ned.parent)]
    [1, 2]
    """
    cat = catalog or default_catalog()
    wanted = {(e.modality, e.train_dataset, e.model, e.imageset, e.subject, e.roi)
              for e in cat.search(**keys)}
    found: dict[tuple[Any, ...], SourceEntry] = {}
    roots = _ned_roots(Path(src))
    for root in roots:
        in_root: dict[tuple[Any, ...], Path] = {}
        for h5 in sorted(root.glob("modality-*/train_dataset-*/model-*/imageset-*/*.h5")):
            key = _entry_key(root, h5)
            if key is None:
                continue
            if key in in_root:
                raise SourceFormatError(
                    f"{h5.parent}: two files hold the same entry: {in_root[key].name} and "
                    f"{h5.name} (NED's file names before and after its 2024-05-26 rename). "
                    "Keep one of them, with its metadata .npy, and remove the other.")
            in_root[key] = h5
        for key, h5 in in_root.items():
            if key not in wanted or key in found:
                continue
            entry = cat.resolve(**dict(zip(("modality", "train_dataset", "model", "imageset",
                                            "subject", "roi"), key, strict=True)))
            npy = h5.with_name(h5.name.replace(DATASET + "_", DATASET + "_metadata_", 1)
                               ).with_suffix(".npy")
            found[key] = SourceEntry(entry, h5, npy)
    if not found:
        filters = ", ".join(f"{k}={v!r}" for k, v in keys.items() if v is not None) or "none"
        raise ConversionError(
            f"no NED response files under {src} match the filters ({filters}). Looked in "
            f"{', '.join(str(r) for r in roots) or src} for modality-*/train_dataset-*/model-*/"
            "imageset-*/synthetic_neural_responses_sub-XX[_roi-ROI].h5 (or NED's older "
            "synthetic_neural_responses_training_dataset-D_model-X_imageset-S_sub-XX[_roi-ROI]"
            ".h5). Check SRC (the folder "
            f"holding {' or '.join(NED_ROOT_NAMES)}) and the filters."
        )
    return sorted(found.values(), key=lambda s: s.entry.path)


def _entry_key(root: Path, h5: Path) -> tuple[Any, ...] | None:
    """``(modality, train_dataset, model, imageset, subject, roi)`` of a NED response file.

    Both of NED's file names are read; an old name (before 2024-05-26) repeats the folder's
    train dataset, model and image set, which must agree.  Other ``.h5`` files give None.
    """
    folder = _FOLDER_RE.match(h5.parent.relative_to(root).as_posix())
    name = _NAME_RE.match(h5.name) or _OLD_NAME_RE.match(h5.name)
    if folder is None or name is None:
        return None
    keys = folder.groupdict()
    named = {k: v for k, v in name.groupdict().items() if k in keys}
    differ = {k: v for k, v in named.items() if v != keys[k]}
    if differ:
        raise SourceFormatError(
            f"{h5}: the file name says " + ", ".join(f"{k} {v!r}" for k, v in differ.items())
            + " but its folder says " + ", ".join(f"{k} {keys[k]!r}" for k in differ)
            + ". A file in modality-M/train_dataset-D/model-X/imageset-S/ must be named "
            "synthetic_neural_responses_sub-SS[_roi-R].h5 or (NED's name before 2024-05-26) "
            "synthetic_neural_responses_training_dataset-D_model-X_imageset-S_sub-SS[_roi-R].h5."
            " Move the file to the folder its name gives, or rename it.")
    return (keys["modality"], keys["train_dataset"], keys["model"], keys["imageset"],
            int(name["subject"]), name["roi"])


def _ned_roots(src: Path) -> list[Path]:
    if not src.is_dir():
        raise ConversionError(f"NED source folder {src} does not exist or is not a folder")
    if any(src.glob("modality-*")):
        return [src]
    return [src / name for name in NED_ROOT_NAMES if (src / name).is_dir()]


@_config.progress_option
def convert_ned(
    src: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    modality: str | list[str] | None = None,
    subject: int | list[int] | None = None,
    roi: str | list[str] | None = None,
    imageset: str | list[str] | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    verify_existing: bool = True,
    storage_options: Mapping[str, Any] | None = None,
    show_progress: bool | None = None,
    catalog: Catalog | None = None,
) -> ConversionReport:
    """Convert a NED folder of pre-generated responses into nest-data Zarr stores.

    Each entry becomes one store at ``dest/<catalog path>``; values are copied bit for bit,
    streamed one chunk at a time, and every metadata field becomes a coordinate or an
    attribute.  A store appears at its final path only when complete.  Rerunning after an
    interruption skips entries whose store is complete, made from the same source files
    and (with ``verify_existing``) passes its checksums.

    Parameters
    ----------
    src : path
        Folder holding NED's ``pregenerated_insilico_neural_responses/`` (or
        ``synthetic_neural_responses/``).
    dest : path or URL
        Root of the collection to write: a local folder, or a remote fsspec URL
        (``s3://bucket/prefix``, ``gs://...``) to publish a collection to a bucket.  Stores
        are built locally and uploaded with their root ``zarr.json`` last, so a remote store
        exists only once it is complete.
    modality, subject, roi, imageset : optional
        Convert only matching entries (scalars or lists).
    workers : int, optional
        Processes converting entries in parallel (default: number of CPUs, at most 4).
    overwrite : bool
        Reconvert entries even when a complete store exists.
    verify_existing : bool
        Re-check the checksums of existing stores before skipping them.
    storage_options : dict, optional
        fsspec options for a remote ``dest`` (credentials, ``endpoint_url``...).
    show_progress : bool, optional
        Progress bar over entries.
    catalog : Catalog, optional
        Catalog giving the store paths.

    Returns
    -------
    ConversionReport

    Raises
    ------
    ConversionError
        Some entries failed (the others are converted); the message names each source file
        and what is wrong with it.

    Examples
    --------
    >>> import tempfile
    >>> from nest_data.synthetic import write_ned
    >>> from nest_data.converters import convert_ned
    >>> src = tempfile.mkdtemp()
    >>> _ = write_ned(src, modalities=["fmri"], subjects=[1], rois=["V1"], imagesets=["nsd"],
    ...               n_images=8, show_progress=False)
    >>> print(convert_ned(src, tempfile.mkdtemp(), workers=1, show_progress=False))
    1 converted, 0 already complete, 0 failed
    """
    cat = catalog or default_catalog()
    sources = discover_ned(src, catalog=cat, modality=modality, subject=subject, roi=roi,
                           imageset=imageset)
    dest_text = os.fspath(dest)
    options = dict(storage_options or {})
    if is_local(dest_text):
        if options:
            make_store(dest_text, options)  # raises: options are useless for a folder
        make_root(dest_text)
    else:
        validate_storage_options(dest_text, options)
    report = ConversionReport()
    with _dest_lock(dest_text):
        removed = clean_staging(dest_text)
        if removed:
            logger.info("removed %d partial store(s) left by an interrupted run in %s",
                        removed, dest_text)
        n_workers = min(workers or min(os.cpu_count() or 1, 4), len(sources))
        jobs = [(s, dest_text, options, cat.model_spec(s.entry).units, overwrite,
                 verify_existing) for s in sources]
        for job, outcome in run_jobs(_attempt, jobs, workers=n_workers, desc="converting NED",
                                     unit="entry"):
            label = job[0].entry.label
            if isinstance(outcome, BaseException):
                report.failed[label] = (str(outcome) if isinstance(outcome, NestDataError)
                                        else f"{type(outcome).__name__}: {outcome}")
                logger.error("failed to convert %s: %s", label, outcome)
            elif outcome == "skipped":
                report.skipped.append(label)
            else:
                report.converted.append(label)
    report.converted.sort()
    report.skipped.sort()
    logger.info("NED conversion into %s: %s", dest_text, report)
    if report.failed:
        listing = "\n  ".join(f"{k}: {v}" for k, v in sorted(report.failed.items()))
        raise ConversionError(
            f"{len(report.failed)} of {len(sources)} entries failed ({report}); nothing was "
            f"written for them:\n  {listing}\nFix or re-download those files and rerun the "
            "same command: completed entries are skipped."
        )
    return report


def _attempt(job: tuple[SourceEntry, str, dict[str, Any], str, bool, bool]) -> str:
    source, dest, options, units, overwrite, verify_existing = job
    return convert_entry(source, dest, storage_options=options, units=units,
                         overwrite=overwrite, verify_existing=verify_existing)


@contextlib.contextmanager
def _dest_lock(dest: str) -> Iterator[None]:
    """Hold an exclusive lock on a local ``dest`` so two conversions never interleave there.

    Remote roots have no locks: two conversions into one bucket prefix at once may both
    upload an entry, and the one that finishes last wins (each store stays consistent).
    """
    if not is_local(dest):
        yield
        return
    with (Path(local_path(dest)) / ".nest-data.lock").open("w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise ConversionError(f"another nest-data process is writing to {dest}; wait for "
                                  "it to finish, or write to another folder") from exc
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ------------------------------------------------------------------------------ one entry


def convert_entry(
    source: SourceEntry, dest: str | os.PathLike[str], *,
    storage_options: Mapping[str, Any] | None = None, units: str = "",
    overwrite: bool = False, verify_existing: bool = True,
) -> str:
    """Convert one NED entry; return ``"converted"`` or ``"skipped"``."""
    fingerprint = {"h5": _file_fingerprint(source.h5), "npy": _file_fingerprint(source.npy)}
    options = dict(storage_options or {})
    if not overwrite and _is_done(dest, source.entry, fingerprint, verify_existing, options):
        return "skipped"
    meta = load_npy_dict(source.npy)
    try:
        h5 = h5py.File(source.h5, "r")
    except OSError as exc:
        raise SourceFormatError(f"{source.h5}: cannot be read as HDF5 ({exc}); the file is "
                                "truncated or damaged, re-download it") from exc
    with h5:
        if DATASET not in h5:
            raise SourceFormatError(f"{source.h5}: no dataset {DATASET!r} (found "
                                    f"{sorted(h5.keys())}); is this a NED response file?")
        dset = h5[DATASET]
        data = entry_data(source, dset, meta, units)
        data.fingerprint = fingerprint
        write_entry(data, dest, source.entry.path, storage_options=options)
    return "converted"


def _file_fingerprint(path: Path) -> dict[str, Any]:
    try:
        st = path.stat()
    except FileNotFoundError as exc:
        raise SourceFormatError(f"{path}: file is missing; NED keeps the .h5 and the metadata "
                                ".npy side by side") from exc
    return {"name": path.name, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def _is_done(dest: str | os.PathLike[str], entry: Entry, fingerprint: Mapping[str, Any],
             verify: bool, options: Mapping[str, Any]) -> bool:
    if not store_exists(dest, entry.path, options):
        return False
    store = make_store(join(dest, entry.path), options)
    try:
        meta = read_store_attrs(store)
    except StoreNotFoundError:
        return False
    if meta.get("fingerprint") != fingerprint:
        logger.info("%s: source files changed since the store was written; reconverting",
                    entry.label)
        return False
    if verify:
        problems = verify_store(store)
        if problems:
            logger.warning("%s: existing store fails verification (%s); reconverting",
                           entry.label, problems[0])
            return False
    return True


def entry_data(source: SourceEntry, dset: h5py.Dataset, meta: Mapping[str, Any],
               units: str) -> EntryData:
    """Check a NED entry's shapes and gather its coordinates, attributes and aux arrays."""
    entry, h5_path, npy = source.entry, source.h5, source.npy
    expected_ndim = 2 if entry.modality == "fmri" else 4
    if dset.dtype != np.float32 or dset.ndim != expected_ndim:
        raise SourceFormatError(f"{h5_path}: dataset {DATASET!r} is {dset.dtype} with shape "
                                f"{dset.shape}; NED {entry.modality} files hold float32 arrays "
                                f"with {expected_ndim} dimensions")
    n_images = int(dset.shape[0])
    coords: dict[str, tuple[tuple[str, ...], np.ndarray, dict[str, Any]]] = {
        "image": (("image",), np.arange(n_images, dtype=np.int64),
                  {"description": f"row index into the {entry.imageset} image set"}),
    }
    attrs: dict[str, Any] = {k: v for k, v in entry.key.items() if v is not None}
    attrs["units"] = units
    aux: dict[str, np.ndarray] = {}
    encoding = meta_block(meta, "encoding_models", npy)
    if entry.modality == "fmri":
        _fmri_coords(dset, meta, encoding, npy, coords, attrs, aux)
    else:
        _eeg_coords(dset, meta, encoding, npy, coords, aux)
    coords.update(_image_labels(entry, meta, n_images, npy, aux))
    attrs["title"] = f"NEST in silico {entry.modality} responses: {entry.label}"
    attrs["provenance"] = {
        "converter": f"nest-data {_version()} (nest_data.converters.ned)",
        "source_format": "NED pre-generated in silico neural responses (HDF5 + pickled .npy)",
        "sources": [
            {"file": h5_path.name, "bytes": h5_path.stat().st_size, "dataset": DATASET,
             "note": "values copied bit for bit; their SHA-256 is the 'sha256' attribute"},
            {"file": npy.name, "bytes": npy.stat().st_size, "sha256": file_digest(npy)},
        ],
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    return EntryData(dims=entry.dims, shape=tuple(int(s) for s in dset.shape),
                     read_rows=lambda a, b: dset[a:b], coords=coords, attrs=attrs,
                     keys=entry.key, aux=aux)


def _fmri_coords(dset: h5py.Dataset, meta: Mapping[str, Any], encoding: Mapping[str, Any],
                 npy: Path, coords: dict[str, Any], attrs: dict[str, Any],
                 aux: dict[str, np.ndarray]) -> None:
    voxel_coords, voxel_attrs = fmri_voxel_labels(
        meta_block(meta, "fmri", npy), meta_block(encoding, "encoding_accuracy", npy), npy,
        source_prefix="encoding_models.encoding_accuracy")
    if dset.shape[1] != len(voxel_coords["voxel"][1]):
        raise SourceFormatError(f"{dset.file.filename}: responses have {dset.shape[1]} voxels "
                                f"but roi_mask_volume {tuple(voxel_attrs['volume_shape'])} has "
                                f"{len(voxel_coords['voxel'][1])} True cells; the files do not "
                                "belong together")
    coords.update(voxel_coords)
    attrs.update(voxel_attrs)
    splits = encoding.get("train_val_test_nsd_image_splits") or {}
    aux.update({k: np.asarray(v) for k, v in splits.items()})


def _eeg_coords(dset: h5py.Dataset, meta: Mapping[str, Any], encoding: Mapping[str, Any],
                npy: Path, coords: dict[str, Any], aux: dict[str, np.ndarray]) -> None:
    n_rep, n_ch, n_t = (int(s) for s in dset.shape[1:])
    coords.update(eeg_labels(meta_block(meta, "eeg", npy),
                             meta_block(encoding, "encoding_accuracy", npy), npy,
                             shape=(n_rep, n_ch, n_t)))
    splits = encoding.get("train_test_things_image_splits") or {}
    aux.update({k: np.asarray(v) for k, v in splits.items()})


def _image_labels(entry: Entry, meta: Mapping[str, Any], n_images: int, npy: Path,
                  aux: dict[str, np.ndarray]) -> dict[str, Any]:
    """Image-set label coordinates (nsd: id, shared-1000, split; things: concept, path...).

    Label fields are read from dicts, lists or arrays alike (NED wrote ``image_paths``,
    ``unique_id`` and ``label_names`` as dicts keyed by row).  Per-concept and per-class
    tables (``unique_id``, ``label_names``) are looked up through the per-image indices
    (``image_concept_index``, ``label_number``).
    """
    block_name = f"{entry.imageset}_labels"
    labels = meta_block(meta, block_name, npy)
    out: dict[str, Any] = {}
    if entry.imageset == "nsd":
        subjectim = meta_index(labels, "subjectim", npy, block_name=block_name)
        if subjectim.ndim != 2:
            raise SourceFormatError(f"{npy}: {block_name}.subjectim has shape "
                                    f"{subjectim.shape}; expected (subjects, images), NSD's "
                                    "(8, 10000). Re-download the file.")
        ids = np.arange(n_images, dtype=np.int64)
        shared = np.intersect1d(subjectim[0], subjectim[1]) if len(subjectim) > 1 else ()
        for row in subjectim[2:]:
            shared = np.intersect1d(shared, row)
        out["nsd_id"] = (("image",), ids, {"description": "0-based NSD 73k image id"})
        out["shared1000"] = (("image",), np.isin(ids, shared),
                             {"description": "image seen by all 8 NSD subjects"})
        if "train_img_num" in aux:
            split = np.full(n_images, "", dtype=object)
            for name in ("train", "val", "test"):
                split[np.isin(ids, aux.get(f"{name}_img_num", ()))] = name
            out["split"] = (("image",), split.astype(str),
                            {"description": "use of the image in training this subject's "
                                            "encoder: train, val, test or empty"})
        aux["nsd_subjectim"] = subjectim
        if "masterordering" in labels:
            aux["nsd_masterordering"] = _trial_order(labels, block_name, npy)
    elif entry.imageset == "things":
        index = meta_index(labels, "image_concept_index", npy, n_images, block_name)
        paths = meta_field(labels, "image_paths", npy, n_images, block_name).astype(str)
        out["concept_index"] = (("image",), index, {})
        out["concept"] = (("image",), np.array([p.split("/")[0] for p in paths]), {})
        out["path"] = (("image",), paths, {"description": "image path inside THINGS"})
        if "unique_id" in labels:
            unique_id = meta_field(labels, "unique_id", npy, block_name=block_name).astype(str)
            out["unique_id"] = (("image",), meta_lookup(
                unique_id, index, npy, f"{block_name}.unique_id",
                f"{block_name}.image_concept_index"), {})
    elif entry.imageset == "imagenet_val":
        number = meta_index(labels, "label_number", npy, n_images, block_name)
        out["label_number"] = (("image",), number, {"description": "ImageNet class index"})
        if "label_names" in labels:
            names = meta_field(labels, "label_names", npy, block_name=block_name).astype(str)
            out["label_name"] = (("image",), meta_lookup(
                names, number, npy, f"{block_name}.label_names",
                f"{block_name}.label_number"), {})
    return out


def _trial_order(labels: Mapping[str, Any], block_name: str, npy: Path) -> np.ndarray:
    """NSD's ``masterordering`` as one vector of trials (``loadmat`` gives it as (1, 30000))."""
    order = meta_index(labels, "masterordering", npy, block_name=block_name)
    if order.ndim == 2 and order.shape[0] == 1:
        return order[0]
    if order.ndim != 1:
        raise SourceFormatError(f"{npy}: {block_name}.masterordering has shape {order.shape}; "
                                "expected NSD's trial order, (1, 30000) as loadmat reads it or "
                                "(30000,). Re-download the file.")
    return order


def _version() -> str:
    from nest_data import __version__

    return __version__
