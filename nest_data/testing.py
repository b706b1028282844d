"""A miniature NED: writes folders in NED's exact original format, with synthetic values.

Used by the demo, the tests and the benchmarks.  The files look exactly like the ones NED
distributed (see ``shared/spec/nest-formats.md``): one contiguous, uncompressed float32 HDF5
dataset ``synthetic_neural_responses`` per entry and a pickled ``.npy`` metadata dict with the
``fmri``/``eeg`` block, the ``encoding_models`` block and the image set's label block.

Values are deterministic functions of ``seed`` and have structure: every image set has a few
latent image features shared by all subjects and ROIs, every ROI mixes them with its own
spatially smooth voxel loadings, voxels differ in reliability (``ncsnr``), and EEG responses
are evoked waveforms whose amplitudes depend on the same image features.  **The numbers are
synthetic**; only the formats are NED's.
"""

from __future__ import annotations

import functools
import logging
import os
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, cast

import h5py
import numpy as np

from nest_data._parallel import run_jobs

logger = logging.getLogger("nest_data")

__all__ = [
    "CHANNELS",
    "FSAVERAGE_ROI_LAYOUT",
    "FWRF_METADATA_LAYOUTS",
    "FWRF_TRUNK",
    "NAME_SCHEMES",
    "NED_ROOT_NAMES",
    "ROI_VOXELS_SUB01",
    "SPLIT_ROIS",
    "TIMES",
    "VIT_B_32_FILE",
    "VOLUME_SHAPES",
    "eeg_head_arrays",
    "eeg_metadata_path",
    "eeg_weight_paths",
    "fsaverage_arrays",
    "fsaverage_paths",
    "fwrf_metadata_path",
    "fwrf_state_dicts",
    "fwrf_weight_paths",
    "ned_file_paths",
    "roi_voxel_count",
    "test_images",
    "vit_b_32_state_dict",
    "write_eeg_weights",
    "write_fsaverage_weights",
    "write_fwrf_weights",
    "write_image_folder",
    "write_image_zarr",
    "write_ned",
    "write_vit_b_32",
]

#: The two root folder names NED used (release, creation scripts).
NED_ROOT_NAMES = ("pregenerated_insilico_neural_responses", "synthetic_neural_responses")

#: Voxels per ROI for subject 1 (BERG model card).
ROI_VOXELS_SUB01 = {
    "V1": 1350, "V2": 1433, "V3": 1187, "hV4": 687, "EBA": 2971, "FBA-2": 430, "OFA": 355,
    "FFA-1": 484, "FFA-2": 310, "PPA": 1033, "RSC": 566, "OPA": 1611, "OWFA": 464,
    "VWFA-1": 773, "VWFA-2": 505, "mfs-words": 165, "early": 5917, "midventral": 986,
    "midlateral": 834, "midparietal": 950, "parietal": 3548, "lateral": 7799, "ventral": 7604,
}

#: Functional volume shape per subject (1.8 mm NSD space; sub-01 as in NED's metadata).
VOLUME_SHAPES = {1: (81, 104, 83), 2: (82, 106, 84), 3: (81, 106, 82), 4: (85, 99, 80),
                 5: (79, 97, 78), 6: (85, 113, 83), 7: (78, 95, 81), 8: (80, 103, 78)}

#: THINGS-EEG2 channel order.
CHANNELS = tuple(
    "Fp1 F3 F7 FT9 FC5 FC1 C3 T7 TP9 CP5 CP1 Pz P3 P7 O1 Oz O2 P4 P8 TP10 CP6 CP2 Cz C4 T8 "
    "FT10 FC6 FC2 F4 F8 Fp2 AF7 AF3 AFz F1 F5 FT7 FC3 FCz C1 C5 TP7 CP3 P1 P5 PO7 PO3 POz PO4 "
    "PO8 P6 P2 CPz CP4 TP8 C6 C2 FC4 FT8 F6 F2 AF4 AF8".split()
)
#: EEG time points in seconds: -0.100 to 0.595 in 5 ms steps.
TIMES = np.round(np.arange(140) * 0.005 - 0.1, 3)

_CONCEPTS = ("aardvark", "accordion", "airplane", "alligator", "anchor", "apple", "axe",
             "backpack", "banana", "barrel", "bear", "bed", "bee", "bicycle", "boat", "book",
             "bottle", "bowl", "bread", "bridge", "butterfly", "cake", "camel", "candle", "car",
             "cat", "chair", "clock", "cow", "crab", "dog", "dolphin", "door", "duck", "face",
             "fence", "fish", "flower", "fork", "frog", "guitar", "hammer", "hat", "horse",
             "house", "key", "kite", "lamp", "leaf", "lion")
_N_LATENT = 6
_BLOCK_BYTES = 64 * 2**20  # rows written to HDF5 at a time
_NOISE_ROWS = 64  # rows drawn from one generator


def roi_voxel_count(subject: int, roi: str) -> int:
    """Voxel count of an ROI: the published one for subject 1, a fixed variation otherwise.

    Examples
    --------
    >>> roi_voxel_count(1, "V1")
    1350
    """
    base = ROI_VOXELS_SUB01[roi]
    if subject == 1:
        return base
    factor = 0.8 + 0.4 * _rng(0, "count", subject, roi).random()
    return max(8, round(base * factor))


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
    >>> from nest_data.testing import write_ned
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
                               unit="file", show_progress=show_progress,
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


# ------------------------------------------------------------------------------ values


def _rng(seed: int, *parts: Any) -> np.random.Generator:
    return np.random.default_rng([seed, *(zlib.crc32(str(p).encode()) for p in parts)])


def _image_features(seed: int, imageset: str, start: int, stop: int) -> np.ndarray:
    """Latent features of images ``start:stop`` of an image set (shared by all entries)."""
    # One generator per block of 4096 images keeps rows independent of how they are read.
    out = []
    for block in range(start // 4096, (stop - 1) // 4096 + 1):
        feats = _rng(seed, "images", imageset, block).standard_normal((4096, _N_LATENT))
        lo, hi = max(start, block * 4096), min(stop, (block + 1) * 4096)
        out.append(feats[lo - block * 4096: hi - block * 4096])
    return np.concatenate(out).astype(np.float32)


def _normal_rows(seed: int, parts: tuple[Any, ...], start: int, stop: int,
                 row_shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal rows ``start:stop``, identical however the rows are requested."""
    out = np.empty((stop - start, *row_shape), dtype=np.float32)
    for block in range(start // _NOISE_ROWS, (stop - 1) // _NOISE_ROWS + 1):
        lo, hi = block * _NOISE_ROWS, (block + 1) * _NOISE_ROWS
        rows = _rng(seed, *parts, block).standard_normal((_NOISE_ROWS, *row_shape),
                                                         dtype=np.float32)
        a, b = max(start, lo), min(stop, hi)
        out[a - start: b - start] = rows[a - lo: b - lo]
    return out


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


@functools.lru_cache(maxsize=64)
def _roi_mask(seed: int, subject: int, roi: str, count: int) -> np.ndarray:
    """A compact blob of exactly ``count`` voxels around an ROI-specific centre."""
    shape = np.array(VOLUME_SHAPES[subject])
    if count > shape.prod():
        raise ValueError(f"{count} voxels do not fit in a {tuple(shape)} volume")
    rng = _rng(seed, "mask", roi)  # same place in every subject, like a real ROI
    centre = shape * (0.25 + 0.5 * rng.random(3))
    half = int(np.ceil(2.0 * count ** (1 / 3))) + 3  # box holding well over `count` voxels
    lo = np.clip(np.floor(centre - half).astype(int), 0, shape)
    hi = np.clip(np.ceil(centre + half).astype(int), 0, shape)
    if np.prod(hi - lo) < 2 * count:
        lo, hi = np.zeros(3, int), shape
    grid = np.stack(np.meshgrid(*(np.arange(a, b) for a, b in zip(lo, hi, strict=True)),
                                indexing="ij"), axis=-1).reshape(-1, 3)
    dist = np.sqrt((((grid - centre) * np.array([1.0, 1.3, 0.8])) ** 2).sum(axis=1))
    dist += _rng(seed, "jitter", subject, roi).random(dist.size) * 2.0
    chosen = grid[np.argpartition(dist, count - 1)[:count]]
    mask = np.zeros(tuple(shape), dtype=bool)
    mask[tuple(chosen.T)] = True
    mask.flags.writeable = False
    return mask


def _fmri_metadata(seed: int, imageset: str, subject: int, roi: str, n_voxels: int,
                   n_images: int) -> dict[str, Any]:
    rng = _rng(seed, "fmri-meta", subject, roi)
    mask = _roi_mask(seed, subject, roi, n_voxels)
    shape = np.array(mask.shape)
    affine = np.diag([1.8, 1.8, 1.8, 1.0])
    affine[:3, 3] = -0.9 * shape
    ncsnr = rng.gamma(2.0, 0.25, n_voxels).astype(np.float32)
    noise_ceiling = (100 * ncsnr**2 / (ncsnr**2 + 1 / 3)).astype(np.float32)
    r2 = (noise_ceiling * rng.uniform(0.2, 0.9, n_voxels)).astype(np.float32)
    nnorm = (100 * r2 / np.maximum(noise_ceiling, 1e-6)).astype(np.float32)
    subjectim, masterordering = _nsd_design(seed)
    own = subjectim[subject - 1]
    return {
        "fmri": {"ncsnr": ncsnr, "roi_mask_volume": mask, "fmri_affine": affine},
        "encoding_models": {
            "encoding_accuracy": {"r2": r2, "noise_ceiling": noise_ceiling,
                                  "noise_normalized_encoding": nnorm},
            "train_val_test_nsd_image_splits": {
                "train_img_num": own[1000:], "val_img_num": own[515:1000],
                "test_img_num": own[:515]},
        },
        f"{imageset}_labels": _labels(seed, imageset, n_images, subjectim, masterordering),
    }


def _fmri_loadings(seed: int, subject: int, roi: str, fmri: Mapping[str, Any]) -> np.ndarray:
    """Spatially smooth voxel loadings on the latent features, (n_latent, n_voxels)."""
    ijk = np.argwhere(fmri["roi_mask_volume"]).astype(np.float32)
    ijk = (ijk - ijk.mean(0)) / (ijk.std(0) + 1e-6)
    roi_profile = _rng(seed, "roi", roi).standard_normal(_N_LATENT)
    spatial = _rng(seed, "space", subject, roi).standard_normal((_N_LATENT, 3)) * 0.4
    loadings = roi_profile[:, None] + spatial @ ijk.T
    reliability = np.minimum(fmri["ncsnr"], 1.5)[None, :]
    return (loadings * reliability).astype(np.float32)


def _fmri_rows(seed: int, imageset: str, subject: int, roi: str, start: int, stop: int,
               loadings: np.ndarray) -> np.ndarray:
    feats = _image_features(seed, imageset, start, stop)
    noise = _normal_rows(seed, ("fmri-noise", imageset, subject, roi), start, stop,
                         (loadings.shape[1],))
    return (feats @ loadings + 0.6 * noise).astype(np.float32)


def _eeg_waveform(seed: int, subject: int) -> np.ndarray:
    """Per-latent evoked waveforms over (channel, time): (n_latent, 63, 140)."""
    rng = _rng(seed, "eeg-wave", subject)
    t = TIMES[None, None, :]
    latency = 0.08 + 0.12 * rng.random((_N_LATENT, 1, 1))
    topo = rng.standard_normal((_N_LATENT, 63, 1))
    return (topo * np.exp(-((t - latency) ** 2) / 0.002) * (t > 0)).astype(np.float32)


def _eeg_rows(seed: int, imageset: str, subject: int, start: int, stop: int) -> np.ndarray:
    feats = _image_features(seed, imageset, start, stop)
    evoked = np.tensordot(feats, _eeg_waveform(seed, subject), axes=1)  # (n, 63, 140)
    noise = _normal_rows(seed, ("eeg-noise", imageset, subject), start, stop, (4, 63, 140))
    return (evoked[:, None] + 0.5 * noise).astype(np.float32)


def _eeg_metadata(seed: int, imageset: str, subject: int, n_images: int) -> dict[str, Any]:
    rng = _rng(seed, "eeg-meta", subject)
    envelope = np.exp(-((TIMES - 0.15) ** 2) / 0.01)[None, :] * (TIMES > 0)
    corr = (0.05 + 0.6 * envelope * rng.uniform(0.5, 1.0, (63, 1))).astype(np.float32)
    concepts = np.array([_CONCEPTS[i % len(_CONCEPTS)] for i in range(16540 // 10)])
    train_concepts = np.repeat(concepts, 10)
    test_concepts = np.array([_CONCEPTS[i % len(_CONCEPTS)] for i in range(200)])
    subjectim, masterordering = _nsd_design(seed)
    return {
        "eeg": {"ch_names": list(CHANNELS), "times": TIMES.copy()},
        "encoding_models": {
            "encoding_accuracy": {
                "correlation_all_repetitions": corr,
                "correlation_single_repetitions": (corr[None] * rng.uniform(0.7, 0.9, (4, 1, 1))
                                                   ).astype(np.float32),
                "noise_ceiling_upper": np.minimum(corr + 0.2, 1).astype(np.float32),
                "noise_ceiling_lower": np.minimum(corr + 0.1, 1).astype(np.float32),
            },
            "train_test_things_image_splits": {
                "train_img_files": np.array([f"{c}_{i % 10 + 1:02d}s.jpg" for i, c in
                                             enumerate(train_concepts)]),
                "train_img_concepts": train_concepts,
                "test_img_files": np.array([f"{c}_{i:02d}s.jpg" for i, c in
                                            enumerate(test_concepts)]),
                "test_img_concepts": test_concepts,
            },
        },
        f"{imageset}_labels": _labels(seed, imageset, n_images, subjectim, masterordering),
    }


@functools.lru_cache(maxsize=4)
def _nsd_design(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """NSD's subjectim (8, 10000; first 1000 shared) and masterordering, 0-based.

    Shapes as ``scipy.io.loadmat`` reads them from ``nsd_expdesign.mat`` and NED stored
    them: subjectim (8, 10000), masterordering (1, 30000).
    """
    rng = _rng(seed, "nsd-design")
    shared = np.arange(0, 3000, 3)
    others = np.setdiff1d(np.arange(73000), shared)
    own = rng.choice(others, (8, 9000), replace=False)
    subjectim = np.concatenate([np.broadcast_to(shared, (8, 1000)), own], axis=1)
    masterordering = rng.integers(0, 10000, (1, 30000))
    return subjectim.astype(np.int64), masterordering.astype(np.int64)


def _labels(seed: int, imageset: str, n: int, subjectim: np.ndarray,
            masterordering: np.ndarray) -> dict[str, Any]:
    """The image set's label block, in the containers NED's creation scripts wrote.

    things: ``image_concept_index`` an int array per image, ``image_paths`` a dict per image
    ``{0: 'aardvark/aardvark_01b.jpg', ...}``, ``unique_id`` a dict per concept
    ``{0: 'aardvark', ...}``; imagenet_val: ``label_number`` an int array per image,
    ``label_names`` a dict per class; nsd: loadmat's 2-D arrays.
    """
    rng = _rng(seed, "labels", imageset)
    if imageset == "nsd":
        return {"subjectim": subjectim, "masterordering": masterordering}
    if imageset == "imagenet_val":
        return {"label_number": rng.integers(0, 1000, n).astype(np.int64),
                "label_names": {i: f"imagenet class {i}" for i in range(1000)}}
    if imageset == "things":
        index = np.sort(rng.integers(0, len(_CONCEPTS), n)).astype(np.int64)
        letters = rng.choice(list("bns"), n)
        paths: dict[int, str] = {}
        for i, c in enumerate(index.tolist()):
            nth = i - int(np.searchsorted(index, c)) + 1  # index is sorted: images per concept
            paths[i] = f"{_CONCEPTS[c]}/{_CONCEPTS[c]}_{nth:02d}{letters[i]}.jpg"
        return {"image_concept_index": index, "image_paths": paths,
                "unique_id": dict(enumerate(_CONCEPTS))}
    raise ValueError(f"unknown image set {imageset!r}; valid: nsd, imagenet_val, things")


# ------------------------------------------------------------------------------ weights

#: Trunk blocks of NEST's fwRF encoder, in order.
FWRF_TRUNK = ("conv4a", "conv4b", "conv5a", "conv5b", "conv6a", "conv6b")


def fwrf_state_dicts(n_voxels: int, seed: int = 0) -> tuple[dict[str, np.ndarray],
                                                             dict[str, np.ndarray]]:
    """Random but valid fwRF weights in NEST's state_dict layout, as NumPy arrays.

    Returns the encoder's state_dict (54 keys) and the readout's (``rf0..rf2, w, b``), with
    He-scaled convolutions and plausible batch-norm statistics, so responses vary with
    the image.

    Examples
    --------
    >>> enc, fwrf = fwrf_state_dicts(3)
    >>> len(enc), sorted(fwrf)
    (54, ['b', 'rf0', 'rf1', 'rf2', 'w'])
    """
    rng = _rng(seed, "fwrf-weights", n_voxels)
    enc: dict[str, np.ndarray] = {"mu": rng.uniform(0.3, 0.6, (1, 3, 1, 1)).astype(np.float32)}

    def conv(name: str, out: int, inp: int, k: int) -> None:
        enc[f"{name}.weight"] = rng.normal(0, np.sqrt(2 / (inp * k * k)),
                                           (out, inp, k, k)).astype(np.float32)
        enc[f"{name}.bias"] = rng.normal(0, 0.05, out).astype(np.float32)

    def bn(name: str, c: int) -> None:
        enc[f"{name}.weight"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
        enc[f"{name}.bias"] = rng.normal(0, 0.1, c).astype(np.float32)
        enc[f"{name}.running_mean"] = rng.normal(0, 0.2, c).astype(np.float32)
        enc[f"{name}.running_var"] = rng.uniform(0.5, 2.0, c).astype(np.float32)
        enc[f"{name}.num_batches_tracked"] = np.array(1000, dtype=np.int64)

    conv("pre.conv1.0", 64, 3, 11)
    conv("pre.conv2.0", 192, 64, 5)
    bn("enc.bn1", 192)
    conv("enc.conv3", 128, 192, 3)
    for name in FWRF_TRUNK:
        bn(f"enc.{name}.bn1", 128)
        conv(f"enc.{name}.conv1", 64 if name == "conv6b" else 128, 128, 3)
    fwrf = {f"rf{k}": rng.normal(0, 1, (n_voxels, s, s)).astype(np.float32)
            for k, s in enumerate((27, 25, 13))}
    fwrf["w"] = rng.normal(0, 0.05, (n_voxels, 768)).astype(np.float32)
    fwrf["b"] = rng.normal(0, 0.1, n_voxels).astype(np.float32)
    return enc, fwrf


def _fwrf_model_folder(root: str | os.PathLike[str]) -> Path:
    return Path(root) / "encoding_models" / "modality-fmri" / "train_dataset-nsd" / "model-fwrf"


def fwrf_metadata_path(root: str | os.PathLike[str], subject: int, roi: str) -> Path:
    """NEST's (BERG-era) metadata file of one subject's fwRF encoder for one ROI."""
    return _fwrf_model_folder(root) / "metadata" / f"metadata_sub-{subject:02d}_roi-{roi}.npy"


def fwrf_weight_paths(root: str | os.PathLike[str], subject: int, roi: str) -> list[Path]:
    """NEST's fwRF weight file(s) of one subject and ROI (two halves for lateral/ventral)."""
    folder = _fwrf_model_folder(root) / "encoding_models_weights"
    stem = f"weights_sub-{subject:02d}_roi-{roi}"
    if roi in SPLIT_ROIS:
        return [folder / f"{stem}_split-1.pt", folder / f"{stem}_split-2.pt"]
    return [folder / f"{stem}.pt"]


#: ROIs whose voxels NEST split in two halves, one encoder each.
SPLIT_ROIS = ("lateral", "ventral")


#: Layouts of the fwRF metadata file :func:`write_fwrf_weights` can write.
FWRF_METADATA_LAYOUTS = ("berg", "ned", "none")


def write_fwrf_weights(
    root: str | os.PathLike[str], subject: int, roi: str, *, n_voxels: int | None = None,
    seed: int = 0, metadata: str = "berg", betas_info: bool = False,
    extra_files: bool = False,
) -> list[Path]:
    """Write fwRF weights in NEST's original format: ``torch.save`` dicts of pickles.

    Each file holds what NED's training script (``01_train_encoding.py``) saved:
    ``{'args.': argparse.Namespace(...), 'best_params': {'enc': encoder state_dict,
    'fwrfs': {subject: readout state_dict}}, 'stim_mean': (1, 3, 1, 1), 'trn_hist': ...,
    'best_epoch': ...}`` (not its ``final_params``); ``lateral`` and ``ventral`` get
    ``_split-1.pt`` and ``_split-2.pt`` with the voxels split at ``ceil(n / 2)``.  Needs
    torch.

    Parameters
    ----------
    root : path
        Folder in which ``encoding_models/modality-fmri/...`` is written.
    subject : int
        NSD subject, 1-8.
    roi : str
        ROI; ``lateral`` and ``ventral`` get two files.
    n_voxels : int, optional
        Voxels of the ROI (default: :func:`roi_voxel_count`).
    seed : int
        Seed of the weights and labels.
    metadata : {"berg", "ned", "none"}
        The metadata file beside the weights (:func:`fwrf_metadata_path`), with the same
        voxels as :func:`write_ned`'s responses for that subject and ROI: ``"berg"``,
        BERG's flat ``fmri{ncsnr, roi_mask_volume, fmri_affine}`` and
        ``encoding_models{r2, noise_ceiling, explained_variance, train_img_num,
        val_img_num, test_img_num}``; ``"ned"``, NED's (``create_metadata.py``) with the
        same ``fmri`` block and ``encoding_models{encoding_accuracy{r2, noise_ceiling,
        noise_normalized_encoding}, train_val_test_nsd_image_splits{...}}``; ``"none"``, no
        file.
    betas_info : bool
        Also store ``betas_info``, as NED's training script did: ``{subject: {ncsnr,
        roi_mask_volume, fmri_affine, volume_shape, masterordering, subjectim,
        train_img_num, val_img_num, test_img_num}}`` for the whole ROI (both halves hold all
        of it).
    extra_files : bool
        Also write other ``.pt`` files the training left in the same folder: the outputs of
        training phases 2 and 3 (``weights_sub-01_roi-V1train_phase-02.pt``, NED's name,
        and ``weights_sub-01_roi-V1_train_phase-03.pt``) and an all-subjects model
        (``weights_sub-all_roi-V1.pt``), each a loadable checkpoint with other weights.

    Returns
    -------
    list of pathlib.Path
        The weight files written (not the extra files).

    Examples
    --------
    >>> import tempfile
    >>> paths = write_fwrf_weights(tempfile.mkdtemp(), 1, "lateral", n_voxels=4,
    ...                            metadata="none", extra_files=True)
    >>> [p.name for p in paths]
    ['weights_sub-01_roi-lateral_split-1.pt', 'weights_sub-01_roi-lateral_split-2.pt']
    >>> len(list(paths[0].parent.glob("*.pt")))
    7
    """
    import torch

    if metadata not in FWRF_METADATA_LAYOUTS:
        raise ValueError(f"metadata must be one of {FWRF_METADATA_LAYOUTS}, not {metadata!r}")
    n = n_voxels or roi_voxel_count(subject, roi)
    paths = fwrf_weight_paths(root, subject, roi)
    sizes = [n] if len(paths) == 1 else [(n + 1) // 2, n - (n + 1) // 2]
    ned = _fmri_metadata(seed, "nsd", subject, roi, n, n_images=1)
    info = _betas_info(ned, subject) if betas_info else None
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    for part, (path, size) in enumerate(zip(paths, sizes, strict=True), 1):
        checkpoint = _fwrf_checkpoint(subject, roi, part, size, seed + 1000 * part + subject,
                                      info)
        torch.save(checkpoint, path)
        if extra_files:
            stem = path.name.removesuffix(".pt")
            for phase, extra in ((2, f"{stem}train_phase-02.pt"),
                                 (3, f"{stem}_train_phase-03.pt")):
                torch.save(_fwrf_checkpoint(subject, roi, part, size, seed + 7 * phase, info),
                           path.with_name(extra))
    if extra_files:
        torch.save(_fwrf_checkpoint(subject, roi, 1, n, seed + 99, info),
                   paths[0].with_name(f"weights_sub-all_roi-{roi}.pt"))
    if metadata != "none":
        encoding = ned["encoding_models"]
        if metadata == "berg":
            accuracy = encoding["encoding_accuracy"]
            encoding = {"r2": accuracy["r2"], "noise_ceiling": accuracy["noise_ceiling"],
                        "explained_variance": accuracy["noise_normalized_encoding"],
                        **encoding["train_val_test_nsd_image_splits"]}
        meta_path = fwrf_metadata_path(root, subject, roi)
        meta_path.parent.mkdir(parents=True, exist_ok=True)
        _save_pickle(meta_path, {"fmri": ned["fmri"], "encoding_models": encoding})
    return paths


def _betas_info(ned: Mapping[str, Any], subject: int) -> dict[int, dict[str, Any]]:
    """NED's ``betas_info`` of a training checkpoint: the prepared betas' dict minus betas."""
    fmri, splits = ned["fmri"], ned["encoding_models"]["train_val_test_nsd_image_splits"]
    subjectim, masterordering = ned["nsd_labels"]["subjectim"], ned["nsd_labels"][
        "masterordering"]
    return {subject: {"volume_shape": fmri["roi_mask_volume"].shape,
                      "roi_mask_volume": fmri["roi_mask_volume"],
                      "fmri_affine": fmri["fmri_affine"],
                      "ncsnr": fmri["ncsnr"].astype(np.float64),  # nibabel's get_fdata
                      "masterordering": masterordering, "subjectim": subjectim, **splits}}


def _fwrf_checkpoint(subject: int, roi: str, part: int, n_voxels: int, seed: int,
                     betas_info: Mapping[int, Any] | None) -> dict[str, Any]:
    """One ``torch.save`` dict of NED's fwRF training script, random weights from ``seed``."""
    import argparse

    import torch

    enc, fwrf = fwrf_state_dicts(n_voxels, seed=seed)
    checkpoint: dict[str, Any] = {
        "args.": argparse.Namespace(used_nsd_sub=subject, roi=roi, split=part, lr=1e-3,
                                    trunk_width=64, use_prefilter=1),
        "best_params": {"enc": {k: torch.from_numpy(v) for k, v in enc.items()},
                        "fwrfs": {subject: {k: torch.from_numpy(v) for k, v in fwrf.items()}}},
        "trn_hist": np.linspace(0.5, 0.1, 5), "hold_cc_hist": np.linspace(0.1, 0.3, 5),
        "best_epoch": 4, "best_joint_cc_score": 0.3,
        "stim_mean": torch.from_numpy(enc["mu"]),
    }
    if betas_info is not None:
        checkpoint["betas_info"] = betas_info
    return checkpoint


# ------------------------------------------------------------------------------ EEG weights

#: File name of torchvision's ImageNet ViT-B/32 weights (IMAGENET1K_V1).
VIT_B_32_FILE = "vit_b_32-d86f8d99.pth"
_VIT_LAYERS, _VIT_HIDDEN, _VIT_MLP = 12, 768, 3072
_EEG_FEATURES = 50 * _VIT_HIDDEN * _VIT_LAYERS  # 460,800


def vit_b_32_state_dict(seed: int = 0) -> dict[str, np.ndarray]:
    """Random ViT-B/32 weights in torchvision's ``vit_b_32`` key layout (152 keys, 88 M values).

    Small ViT-style initialisation (normal, std 0.02-0.05; layer norms near 1), so features
    stay finite and vary with the image.

    Examples
    --------
    >>> sd = vit_b_32_state_dict()
    >>> len(sd), sd["conv_proj.weight"].shape
    (152, (768, 3, 32, 32))
    """
    rng = _rng(seed, "vit_b_32")

    def normal(*shape: int, std: float = 0.02) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * np.float32(std))

    h, m = _VIT_HIDDEN, _VIT_MLP
    sd = {"conv_proj.weight": normal(h, 3, 32, 32), "conv_proj.bias": normal(h),
          "class_token": normal(1, 1, h), "encoder.pos_embedding": normal(1, 50, h),
          "encoder.ln.weight": 1 + normal(h), "encoder.ln.bias": normal(h),
          "heads.head.weight": normal(1000, h), "heads.head.bias": normal(1000)}
    for i in range(_VIT_LAYERS):
        p = f"encoder.layers.encoder_layer_{i}."
        sd.update({p + "ln_1.weight": 1 + normal(h), p + "ln_1.bias": normal(h),
                   p + "self_attention.in_proj_weight": normal(3 * h, h, std=0.05),
                   p + "self_attention.in_proj_bias": normal(3 * h),
                   p + "self_attention.out_proj.weight": normal(h, h, std=0.05),
                   p + "self_attention.out_proj.bias": normal(h),
                   p + "ln_2.weight": 1 + normal(h), p + "ln_2.bias": normal(h),
                   p + "mlp.0.weight": normal(m, h, std=0.05), p + "mlp.0.bias": normal(m),
                   p + "mlp.3.weight": normal(h, m, std=0.05), p + "mlp.3.bias": normal(h)})
    return sd


def write_vit_b_32(path: str | os.PathLike[str], seed: int = 0) -> Path:
    """Write :func:`vit_b_32_state_dict` as torchvision ships it: ``torch.save`` of a state_dict.

    Needs torch.  The file (about 350 MB) stands in for torchvision's
    ``vit_b_32-d86f8d99.pth``, which cannot be downloaded here.
    """
    import torch

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: torch.from_numpy(v) for k, v in vit_b_32_state_dict(seed).items()}, target)
    return target


def eeg_head_arrays(subject: int, *, n_components: int = 8, seed: int = 0,
                    n_features: int = _EEG_FEATURES) -> dict[str, Any]:
    """Random but valid EEG encoder parameters of one subject, in BERG's pickled-dict form.

    ``{'scaler_param': {mean_, scale_, var_, n_samples_seen_}, 'pca_param': {components_
    (n_components, n_features), mean_, explained_variance_, n_components_}, 'reg_param':
    {'rep-1'..'rep-4': {coef_ (8820, n_components), intercept_ (8820,)}}}``.  The real files
    have 250 components; tests use a few, which keeps them small (8 components: 15 MB).

    Examples
    --------
    >>> w = eeg_head_arrays(1, n_components=3, n_features=10)
    >>> w["pca_param"]["components_"].shape, w["reg_param"]["rep-4"]["coef_"].shape
    ((3, 10), (8820, 3))
    """
    rng = _rng(seed, "eeg-head", subject)
    reg = {f"rep-{r}": {"coef_": rng.normal(0, 1, (63 * 140, n_components)),
                        "intercept_": rng.normal(0, 0.1, 63 * 140)} for r in range(1, 5)}
    return {**_scaler_pca(_rng(seed, "eeg-head-shared"), n_components, n_features, 16540),
            "reg_param": reg}


def _scaler_pca(rng: np.random.Generator, n_components: int, n_features: int,
                n_samples: int) -> dict[str, Any]:
    """BERG's ``scaler_param`` and ``pca_param`` blocks, random but valid."""
    scale = rng.uniform(0.5, 2.0, n_features)
    components = rng.standard_normal((n_components, n_features), dtype=np.float32)
    components /= np.sqrt(n_features, dtype=np.float32)
    variance = np.sort(rng.uniform(1, 10, n_components))[::-1]
    return {
        "scaler_param": {"mean_": rng.normal(0, 0.5, n_features), "scale_": scale,
                         "var_": scale**2, "n_features_in_": n_features,
                         "n_samples_seen_": n_samples},
        "pca_param": {"components_": components,
                      "mean_": rng.normal(0, 0.1, n_features).astype(np.float32),
                      "explained_variance_": variance,
                      "explained_variance_ratio_": variance / variance.sum() / 2,
                      "singular_values_": np.sqrt(variance * (n_samples - 1)),
                      "n_components_": n_components, "n_samples_": n_samples,
                      "noise_variance_": 0.5, "n_features_in_": n_features},
    }


def _eeg_model_folder(root: str | os.PathLike[str]) -> Path:
    return (Path(root) / "encoding_models" / "modality-eeg" / "train_dataset-things_eeg_2"
            / "model-vit_b_32")


def eeg_metadata_path(root: str | os.PathLike[str], subject: int) -> Path:
    """NEST's (BERG-era) metadata file of one subject's EEG encoder."""
    return _eeg_model_folder(root) / "metadata" / f"metadata_subject-{subject:02d}.npy"


def eeg_weight_paths(root: str | os.PathLike[str], subject: int, layout: str = "berg"
                     ) -> list[Path]:
    """The EEG weight files of one subject: BERG's one file, or NED's three.

    NED: the shared ``StandardScaler_param.npy`` and ``pca_param.npy`` and the subject's
    ``LinearRegression_param_sub-{SS}.npy``.
    """
    folder = _eeg_model_folder(root) / "encoding_models_weights"
    if layout == "berg":
        return [folder / f"weights_subject-{subject:02d}.npy"]
    if layout == "ned":
        return [folder / "StandardScaler_param.npy", folder / "pca_param.npy",
                folder / f"LinearRegression_param_sub-{subject:02d}.npy"]
    raise ValueError(f"layout must be 'berg' or 'ned', not {layout!r}")


def write_eeg_weights(
    root: str | os.PathLike[str], subject: int, *, layout: str = "berg",
    n_components: int = 8, seed: int = 0,
) -> list[Path]:
    """Write one subject's EEG encoder in NEST's original pickled ``.npy`` formats.

    ``layout="berg"`` writes ``weights_subject-{SS}.npy`` (a dict of :func:`eeg_head_arrays`);
    ``layout="ned"`` writes NED's shared ``StandardScaler_param.npy`` and ``pca_param.npy``
    (with twice as many PCA components as the regressions use, as NED kept 1,000 and used
    the first 250) and ``LinearRegression_param_sub-{SS}.npy`` (the ``rep-r`` blocks).  Both
    layouts also get ``metadata_subject-{SS}.npy``: ``eeg{ch_names, times}`` and
    ``encoding_models{correlation_averaged_repetitions, correlation_single_repetitions,
    train_img_info, test_img_info}``.  The backbone is not part of NEST: see
    :func:`write_vit_b_32`.

    Returns
    -------
    list of pathlib.Path
        The weight files written.

    Examples
    --------
    >>> import tempfile
    >>> [p.name for p in write_eeg_weights(tempfile.mkdtemp(), 2, layout="ned",
    ...                                    n_components=2)]
    ['StandardScaler_param.npy', 'pca_param.npy', 'LinearRegression_param_sub-02.npy']
    """
    arrays = eeg_head_arrays(subject, n_components=n_components, seed=seed)
    paths = eeg_weight_paths(root, subject, layout)
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    if layout == "berg":
        _save_pickle(paths[0], arrays)
    else:
        extra = eeg_head_arrays(subject, n_components=2 * n_components, seed=seed + 1)
        pca = dict(arrays["pca_param"])
        pca["components_"] = np.concatenate([pca["components_"],
                                             extra["pca_param"]["components_"][n_components:]])
        pca["n_components_"] = 2 * n_components
        _save_pickle(paths[0], arrays["scaler_param"])
        _save_pickle(paths[1], pca)
        _save_pickle(paths[2], arrays["reg_param"])
    ned = _eeg_metadata(seed, "things", subject, 1)
    accuracy = ned["encoding_models"]["encoding_accuracy"]
    meta = {"eeg": ned["eeg"], "encoding_models": {
        "correlation_averaged_repetitions": accuracy["correlation_all_repetitions"],
        "correlation_single_repetitions": accuracy["correlation_single_repetitions"],
        "train_img_info": ned["encoding_models"]["train_test_things_image_splits"],
        "test_img_info": {"test_img_files": ned["encoding_models"][
            "train_test_things_image_splits"]["test_img_files"]}}}
    meta_path = eeg_metadata_path(root, subject)
    meta_path.parent.mkdir(parents=True, exist_ok=True)
    _save_pickle(meta_path, meta)
    return paths


# ------------------------------------------------------------------------------ fsaverage

#: BERG's 31 fsaverage ROIs as NSD's label files name them (the model card says OVWFA for
#: NSD's OWFA), each at a (start, size) fraction of a hidden line along which the miniature
#: writer lays out ROIs: streams partition the first half, finer ROIs nest inside them.
FSAVERAGE_ROI_LAYOUT: dict[str, tuple[float, float]] = {
    "early": (0.00, 0.08), "midventral": (0.08, 0.03), "midlateral": (0.11, 0.03),
    "midparietal": (0.14, 0.03), "ventral": (0.17, 0.10), "lateral": (0.27, 0.10),
    "parietal": (0.37, 0.10),
    "V1v": (0.000, 0.012), "V1d": (0.012, 0.012), "V2v": (0.024, 0.011),
    "V2d": (0.035, 0.011), "V3v": (0.046, 0.010), "V3d": (0.056, 0.010), "hV4": (0.066, 0.008),
    "OFA": (0.280, 0.006), "FFA-1": (0.180, 0.008), "FFA-2": (0.190, 0.006),
    "mTL-faces": (0.200, 0.004), "aTL-faces": (0.205, 0.004),
    "EBA": (0.290, 0.020), "FBA-1": (0.185, 0.006), "FBA-2": (0.195, 0.005),
    "mTL-bodies": (0.210, 0.004),
    "OPA": (0.380, 0.012), "PPA": (0.220, 0.012), "RSC": (0.400, 0.008),
    "OWFA": (0.300, 0.004), "VWFA-1": (0.235, 0.006), "VWFA-2": (0.242, 0.005),
    "mfs-words": (0.248, 0.003), "mTL-words": (0.252, 0.003),
}


def _fsaverage_model_folder(root: str | os.PathLike[str]) -> Path:
    return (Path(root) / "encoding_models" / "modality-fmri" / "train_dataset-nsd_fsaverage"
            / "model-vit_b_32")


def fsaverage_paths(root: str | os.PathLike[str], subject: int) -> tuple[Path, Path]:
    """BERG's weights and metadata files of one subject's fsaverage encoder under ``root``."""
    folder = _fsaverage_model_folder(root)
    name = f"subject-{subject:02d}.npy"
    return (folder / "encoding_models_weights" / f"weights_{name}",
            folder / "metadata" / f"metadata_{name}")


def fsaverage_arrays(subject: int, *, n_components: int = 8,
                     n_vertices: int = 163842, seed: int = 0,
                     n_features: int = _EEG_FEATURES,
                     coordinates: Mapping[str, np.ndarray] | None = None,
                     ) -> tuple[dict[str, Any], dict[str, Any]]:
    """One subject's fsaverage encoder as BERG's two pickled dicts: weights and metadata.

    Weights: ``{scaler_param, pca_param, lh_reg_param{coef_ (n_vertices, n_components),
    intercept_, n_features_in_}, rh_reg_param{...}}`` with the keys and dtypes that BERG's
    ``train_encoding.py`` saves from scikit-learn.  Metadata: ``fmri{lh_ncsnr, rh_ncsnr,
    lh_fsaverage_rois, rh_fsaverage_rois}`` (ROI name -> ``np.where`` vertex indices, as
    BERG's ``prepare_nsd_fsaverage.py``) and ``encoding_models{train_img_num, val_img_num,
    test_img_num, {lh,rh}_{correlation, r2, noise_ceiling, explained_variance}}`` computed
    with BERG's arithmetic.  ROIs are scattered over the vertex indices as on the real
    icosahedral mesh; regression weights vary smoothly along the writer's hidden ROI line.
    ``coordinates`` (hemisphere -> ``(k, 3)`` positions of the first ``k`` vertices, e.g.
    the fsaverage5 mesh, whose vertices are fsaverage's first 10,242) lays that line out
    from posterior to anterior over those vertices, so maps drawn on the mesh are smooth.

    Examples
    --------
    >>> w, m = fsaverage_arrays(1, n_components=2, n_vertices=642, n_features=10)
    >>> w["lh_reg_param"]["coef_"].shape, len(m["fmri"]["rh_fsaverage_rois"])
    ((642, 2), 31)
    """
    rng = _rng(seed, "fsaverage", subject)
    weights = _scaler_pca(rng, n_components, n_features, 9000)
    fmri: dict[str, Any] = {}
    accuracy: dict[str, Any] = {}
    for hemi in ("lh", "rh"):
        hidden = rng.permutation(n_vertices)  # hidden line position -> vertex index
        if coordinates is not None and hemi in coordinates:
            k = min(len(coordinates[hemi]), n_vertices)
            placed = np.argsort(np.asarray(coordinates[hemi])[:k, 1], kind="stable")
            hidden = np.concatenate([placed, hidden[hidden >= k]])
        line = np.empty(n_vertices)
        line[hidden] = np.arange(n_vertices) / n_vertices
        freq = rng.uniform(1, 6, n_components)
        phase = rng.uniform(0, 2 * np.pi, n_components)
        coef = np.sin(2 * np.pi * line[:, None] * freq + phase)
        coef += 0.3 * rng.standard_normal((n_vertices, n_components))
        weights[f"{hemi}_reg_param"] = {
            "coef_": coef.astype(np.float32),
            "intercept_": (0.1 * rng.standard_normal(n_vertices)).astype(np.float32),
            "n_features_in_": n_components}
        rois = {}
        for name, (start, size) in FSAVERAGE_ROI_LAYOUT.items():
            a = int(start * n_vertices)
            rois[name] = np.sort(hidden[a:a + max(1, int(size * n_vertices))]).astype(np.int64)
        ncsnr = rng.gamma(2.0, 0.25, n_vertices).astype(np.float32)
        correlation = np.clip(rng.uniform(-0.1, 0.6, n_vertices), 0, None)
        r2 = correlation**2
        noise_ceiling = ncsnr.astype(np.float64)**2 / (ncsnr.astype(np.float64)**2 + 1 / 3)
        noise_ceiling[noise_ceiling == 0] = 1e-14
        fmri[f"{hemi}_ncsnr"] = ncsnr
        fmri[f"{hemi}_fsaverage_rois"] = rois
        accuracy.update({f"{hemi}_correlation": correlation, f"{hemi}_r2": r2,
                         f"{hemi}_noise_ceiling": noise_ceiling,
                         f"{hemi}_explained_variance": np.minimum(r2 / noise_ceiling * 100,
                                                                  100)})
    own = _nsd_design(seed)[0][subject - 1]
    metadata = {"fmri": {k: fmri[k] for k in ("lh_ncsnr", "rh_ncsnr", "lh_fsaverage_rois",
                                              "rh_fsaverage_rois")},
                "encoding_models": {"train_img_num": np.sort(own[1000:]),
                                    "val_img_num": np.sort(own[515:1000]),
                                    "test_img_num": np.sort(own[:515]), **accuracy}}
    return weights, metadata


def write_fsaverage_weights(
    root: str | os.PathLike[str], subject: int, *, n_components: int = 8,
    n_vertices: int = 163842, seed: int = 0,
    coordinates: Mapping[str, np.ndarray] | None = None,
) -> tuple[Path, Path]:
    """Write one subject's fsaverage encoder in BERG's files (see :func:`fsaverage_arrays`).

    ``encoding_models/modality-fmri/train_dataset-nsd_fsaverage/model-vit_b_32/`` +
    ``encoding_models_weights/weights_subject-{SS}.npy`` and ``metadata/metadata_subject-
    {SS}.npy``.  The real files have 250 components and 163,842 vertices per hemisphere; a
    few components keep the miniature small (8: 26 MB).  The backbone is
    :func:`write_vit_b_32`.

    Returns
    -------
    tuple of pathlib.Path
        The weights file and the metadata file.

    Examples
    --------
    >>> import tempfile
    >>> [p.name for p in write_fsaverage_weights(tempfile.mkdtemp(), 3, n_components=2,
    ...                                          n_vertices=642)]
    ['weights_subject-03.npy', 'metadata_subject-03.npy']
    """
    weights, metadata = fsaverage_arrays(subject, n_components=n_components,
                                         n_vertices=n_vertices, seed=seed,
                                         coordinates=coordinates)
    paths = fsaverage_paths(root, subject)
    for path, obj in zip(paths, (weights, metadata), strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        _save_pickle(path, obj)
    return paths


def _save_pickle(path: Path, obj: Any) -> None:
    np.save(path, np.asarray(obj, dtype=object), allow_pickle=True)


# ------------------------------------------------------------------------------ images


def test_images(n: int, size: int | tuple[int, int] = 227, *, seed: int = 0) -> np.ndarray:
    """``n`` smooth random uint8 RGB images ``(n, H, W, 3)`` (blobs and gradients, no noise).

    Examples
    --------
    >>> test_images(2, (40, 60)).shape
    (2, 40, 60, 3)
    """
    height, width = (size, size) if isinstance(size, int) else size
    rng = _rng(seed, "images", n, height, width)
    out = np.empty((n, height, width, 3), dtype=np.uint8)
    for index in range(n):
        walk = np.cumsum(np.cumsum(rng.normal(0, 1, (height, width, 3)), 0), 1)
        lo, hi = walk.min(axis=(0, 1)), walk.max(axis=(0, 1))
        out[index] = np.round((walk - lo) / (hi - lo) * 255)
    return out


test_images.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def write_image_folder(folder: str | os.PathLike[str], images: np.ndarray,
                       names: Iterable[str] | None = None) -> list[Path]:
    """Write ``(n, H, W, 3)`` uint8 images as PNG files (lossless); needs pillow.

    ``names`` are the files' paths relative to ``folder``, without ``.png`` (default
    ``image_00000``...); names with ``/`` make sub-folders.

    Examples
    --------
    >>> import tempfile
    >>> [p.name for p in write_image_folder(tempfile.mkdtemp(), test_images(2, 16))]
    ['image_00000.png', 'image_00001.png']
    """
    from PIL import Image

    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    stems = list(names) if names is not None else [f"image_{i:05d}" for i in range(len(images))]
    paths = []
    for stem, image in zip(stems, images, strict=True):
        path = target / f"{stem}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


def write_image_zarr(url: str | os.PathLike[str], images: np.ndarray,
                     ids: Iterable[str] | None = None, *, chunk_images: int = 8) -> str:
    """Write images as a Zarr v3 group: ``images`` (n, H, W, 3) uint8 and ``image_id``.

    This is the image-array input of ``nest-data generate``.

    Examples
    --------
    >>> import tempfile, zarr
    >>> url = write_image_zarr(tempfile.mkdtemp() + "/imgs.zarr", test_images(3, 16), "abc")
    >>> zarr.open_group(url)["images"].shape
    (3, 16, 16, 3)
    """
    import zarr

    group = zarr.open_group(os.fspath(url), mode="w", zarr_format=3)
    array = group.create_array("images", shape=images.shape, dtype="uint8",
                               chunks=(chunk_images, *images.shape[1:]),
                               dimension_names=("image", "y", "x", "rgb"))
    array[...] = images
    if ids is not None:
        values = np.asarray(list(ids), dtype=object)
        group.create_array("image_id", shape=values.shape, dtype=str,
                           dimension_names=("image",))[...] = values
    return os.fspath(url)
