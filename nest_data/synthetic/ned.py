"""Miniature NED folders: NED's exact files and names, with synthetic values."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, cast

import h5py
import numpy as np

from nest_data import _config
from nest_data._parallel import run_jobs
from nest_data.synthetic.responses import (
    ROI_VOXELS_SUB01,
    VOLUME_SHAPES,
    _eeg_metadata,
    _eeg_rows,
    _fmri_loadings,
    _fmri_metadata,
    _fmri_rows,
    roi_voxel_count,
)

logger = logging.getLogger("nest_data")

#: The two root folder names NED used (release, creation scripts).
NED_ROOT_NAMES = ("pregenerated_insilico_neural_responses", "synthetic_neural_responses")
_BLOCK_BYTES = 64 * 2**20  # rows written to HDF5 at a time


#: NED's file naming schemes: ``"new"`` since 2024-05-26, ``"old"`` before (NED commit cbedc74).
NAME_SCHEMES = ("new", "old")

_NED_MODELS = {"fmri": ("nsd", "fwrf"), "eeg": ("things_eeg_2", "vit_b_32")}


def ned_file_paths(
    root: str | os.PathLike[str], modality: str, imageset: str, subject: int,
    roi: str | None = None, root_name: str = NED_ROOT_NAMES[0], names: str = "new",
) -> tuple[Path, Path]:
    """The ``.h5`` and metadata ``.npy`` paths of one entry in NED's layout.

    ``names="old"`` gives the names NED used before its 2024-05-26 rename, which repeat
    the train dataset, model and image set.

    Examples
    --------
    >>> for path in ned_file_paths("ned", "fmri", "nsd", 1, "V1", names="old"):
    ...     print(path.name)
    synthetic_neural_responses_training_dataset-nsd_model-fwrf_imageset-nsd_sub-01_roi-V1.h5
    synthetic_neural_responses_metadata_training_dataset-nsd_model-fwrf_imageset-nsd_sub-01_roi-V1.npy
    """
    if names not in NAME_SCHEMES:
        raise ValueError(f"names must be one of {NAME_SCHEMES}, not {names!r}")
    train_dataset, model = _NED_MODELS[modality]
    folder = (Path(root) / root_name / f"modality-{modality}" / f"train_dataset-{train_dataset}"
              / f"model-{model}" / f"imageset-{imageset}")
    suffix = f"sub-{subject:02d}" + (f"_roi-{roi}" if modality == "fmri" else "")
    if names == "old":
        suffix = f"training_dataset-{train_dataset}_model-{model}_imageset-{imageset}_{suffix}"
    return (folder / f"synthetic_neural_responses_{suffix}.h5",
            folder / f"synthetic_neural_responses_metadata_{suffix}.npy")


@_config.progress_option
def write_ned(
    root: str | os.PathLike[str],
    *,
    modalities: Iterable[str] = ("fmri", "eeg"),
    subjects: Iterable[int] | None = None,
    rois: Iterable[str] | None = None,
    imagesets: Iterable[str] = ("nsd", "imagenet_val", "things"),
    n_images: int | Mapping[str, int] = 24,
    n_voxels: int | Mapping[str, int] | None = None,
    seed: int = 0,
    root_name: str = NED_ROOT_NAMES[0],
    names: str = "new",
    responses: Mapping[tuple[str, str, int, str | None], np.ndarray] | None = None,
    workers: int = 1,
    show_progress: bool | None = None,
) -> Path:
    """Write a miniature NED folder with synthetic responses in NED's exact format.

    Parameters
    ----------
    root : path
        Folder in which ``root_name`` is created.
    modalities : iterable of {"fmri", "eeg"}
        Which modalities to write.
    subjects : iterable of int, optional
        Subjects (default: 1-8 for fMRI, 1-10 for EEG; fMRI subjects above 8 are skipped).
    rois : iterable of str, optional
        fMRI ROIs (default: all 23).
    imagesets : iterable of str
        Image sets to write.
    n_images : int or dict
        Images per image set (one number for all, or per image set).
    n_voxels : int or dict, optional
        Override the voxel counts (one number for all ROIs, or per ROI); the default is the
        published counts for subject 1 and fixed variations of them for the others.
    seed : int
        Seed of every value written.
    root_name : str
        One of :data:`NED_ROOT_NAMES`.
    names : {"new", "old"}
        File names as NED has them since 2024-05-26, or as before (see
        :func:`ned_file_paths`).
    responses : dict, optional
        Values to write instead of synthetic ones, keyed by ``(modality, imageset, subject,
        roi)`` (``roi`` None for EEG); each array has the entry's shape, e.g. responses that
        an encoder computed for the images of :func:`test_images`.  The metadata is written as
        usual, so an fMRI array needs the entry's voxel count.
    workers : int
        Processes writing files in parallel.
    show_progress : bool, optional
        Show a progress bar (default: on, or ``NEST_DATA_PROGRESS``).

    Returns
    -------
    pathlib.Path
        ``root / root_name``.

    Examples
    --------
    >>> import tempfile
    >>> from nest_data.synthetic import write_ned
    >>> ned = write_ned(tempfile.mkdtemp(), modalities=["fmri"], subjects=[1], rois=["V1"],
    ...                 imagesets=["things"], n_images=10, show_progress=False)
    >>> sorted(p.name for p in ned.rglob("*.h5"))
    ['synthetic_neural_responses_sub-01_roi-V1.h5']
    """
    if root_name not in NED_ROOT_NAMES:
        raise ValueError(f"root_name must be one of {NED_ROOT_NAMES}, not {root_name!r}")
    if names not in NAME_SCHEMES:
        raise ValueError(f"names must be one of {NAME_SCHEMES}, not {names!r}")
    imagesets = list(imagesets)
    jobs: list[tuple[str, str, int, str | None]] = []
    for modality in modalities:
        if modality == "fmri":
            subs = [s for s in (subjects or range(1, 9)) if s in VOLUME_SHAPES]
            jobs += [("fmri", i, s, r) for i in imagesets for s in subs
                     for r in (rois or ROI_VOXELS_SUB01)]
        elif modality == "eeg":
            jobs += [("eeg", i, s, None) for i in imagesets for s in (subjects or range(1, 11))]
        else:
            raise ValueError(f"unknown modality {modality!r}; valid: fmri, eeg")
    counts = n_images if isinstance(n_images, Mapping) else dict.fromkeys(imagesets, n_images)
    given = dict(responses or {})
    unknown = set(given) - set(jobs)
    if unknown:
        raise ValueError(f"responses= names entries that are not written: {sorted(unknown)}")
    # Jobs of one subject and ROI go to the same worker, which computes their mask once.
    jobs.sort(key=lambda j: (j[0], j[2], j[3] or "", j[1]))
    work = [(str(root), root_name, names, seed, job, counts[job[1]], n_voxels, given.get(job))
            for job in jobs]
    for _, outcome in run_jobs(_write_entry, work, workers=workers, desc="writing NED files",
                               unit="file",
                               chunksize=len(imagesets)):
        if isinstance(outcome, BaseException):
            raise outcome
    logger.info("wrote %d miniature NED entries under %s", len(jobs), Path(root) / root_name)
    return Path(root) / root_name


def _write_entry(work: tuple[str, str, str, int, tuple[str, str, int, str | None], int,
                             int | Mapping[str, int] | None, np.ndarray | None]) -> None:
    """Write the ``.h5`` and ``.npy`` files of one entry."""
    (root, root_name, names, seed, (modality, imageset, subject, roi), n_images, n_voxels,
     given) = work
    h5, npy = ned_file_paths(root, modality, imageset, subject, roi, root_name, names)
    h5.parent.mkdir(parents=True, exist_ok=True)
    if modality == "fmri":
        fmri_roi = cast(str, roi)  # every fMRI entry has an ROI
        nv = (n_voxels if isinstance(n_voxels, int) else
              (n_voxels or {}).get(fmri_roi) or roi_voxel_count(subject, fmri_roi))
        meta = _fmri_metadata(seed, imageset, subject, fmri_roi, nv, n_images)
        loadings = _fmri_loadings(seed, subject, fmri_roi, meta["fmri"])
        row_shape: tuple[int, ...] = (nv,)
        rows = functools.partial(_fmri_rows, seed, imageset, subject, fmri_roi,
                                 loadings=loadings)
    else:
        meta = _eeg_metadata(seed, imageset, subject, n_images)
        row_shape = (4, 63, 140)
        rows = functools.partial(_eeg_rows, seed, imageset, subject)
    if given is not None:
        if given.shape != (n_images, *row_shape):
            raise ValueError(f"responses for {modality} {imageset} sub-{subject:02d} {roi}: "
                             f"shape {given.shape}, expected {(n_images, *row_shape)}")
        rows = functools.partial(_given_rows, np.asarray(given, dtype=np.float32))
    _write_h5(h5, n_images, row_shape, rows)
    np.save(npy, np.asarray(meta, dtype=object), allow_pickle=True)


def _given_rows(values: np.ndarray, start: int, stop: int) -> np.ndarray:
    return values[start:stop]


def _write_h5(path: Path, n: int, row_shape: tuple[int, ...], rows: Any) -> None:
    """Write a contiguous float32 dataset block by block (h5py defaults: no chunks)."""
    row_bytes = 4 * int(np.prod(row_shape))
    step = max(1, _BLOCK_BYTES // row_bytes)
    with h5py.File(path, "w") as f:
        dset = f.create_dataset("synthetic_neural_responses", shape=(n, *row_shape),
                                dtype="float32")
        for start in range(0, n, step):
            stop = min(n, start + step)
            dset[start:stop] = rows(start, stop)
