"""One NED entry (its ``.h5`` and metadata ``.npy``) to one nest-data store."""

from __future__ import annotations

import datetime as _dt
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from nest_data._catalog import Entry
from nest_data._digest import file_digest
from nest_data._format import EntryData, read_store_attrs
from nest_data._staging import check_replaceable, store_exists
from nest_data._storage import make_store
from nest_data._urls import join
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
    SourceFormatError,
    StoreNotFoundError,
)

logger = logging.getLogger("nest_data")

#: The one dataset of every NED response file.
DATASET = "synthetic_neural_responses"

__all__ = ["DATASET", "SourceEntry", "convert_entry", "entry_data"]


@dataclass(frozen=True)
class SourceEntry:
    """One NED entry: its catalog entry and its two source files."""

    entry: Entry
    h5: Path
    npy: Path



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
    check_replaceable(dest, source.entry.path, options)  # before the work, not at the end
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
