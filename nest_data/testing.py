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
from typing import Any

import h5py
import numpy as np

from nest_data._parallel import run_jobs

logger = logging.getLogger("nest_data")

__all__ = [
    "CHANNELS",
    "FWRF_TRUNK",
    "NED_ROOT_NAMES",
    "ROI_VOXELS_SUB01",
    "SPLIT_ROIS",
    "TIMES",
    "VOLUME_SHAPES",
    "fwrf_metadata_path",
    "fwrf_state_dicts",
    "fwrf_weight_paths",
    "ned_file_paths",
    "roi_voxel_count",
    "write_fwrf_weights",
    "write_ned",
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


def ned_file_paths(
    root: str | os.PathLike[str], modality: str, imageset: str, subject: int,
    roi: str | None = None, root_name: str = NED_ROOT_NAMES[0],
) -> tuple[Path, Path]:
    """The ``.h5`` and metadata ``.npy`` paths of one entry in NED's layout."""
    model = {"fmri": ("nsd", "fwrf"), "eeg": ("things_eeg_2", "vit_b_32")}[modality]
    folder = (Path(root) / root_name / f"modality-{modality}" / f"train_dataset-{model[0]}"
              / f"model-{model[1]}" / f"imageset-{imageset}")
    suffix = f"sub-{subject:02d}" + (f"_roi-{roi}" if modality == "fmri" else "")
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
    # Jobs of one subject and ROI go to the same worker, which computes their mask once.
    jobs.sort(key=lambda j: (j[0], j[2], j[3] or "", j[1]))
    work = [(str(root), root_name, seed, job, counts[job[1]], n_voxels) for job in jobs]
    for _, outcome in run_jobs(_write_entry, work, workers=workers, desc="writing NED files",
                               unit="file", show_progress=show_progress,
                               chunksize=len(imagesets)):
        if isinstance(outcome, BaseException):
            raise outcome
    logger.info("wrote %d miniature NED entries under %s", len(jobs), Path(root) / root_name)
    return Path(root) / root_name


def _write_entry(work: tuple[str, str, int, tuple[str, str, int, str | None], int,
                             int | Mapping[str, int] | None]) -> None:
    """Write the ``.h5`` and ``.npy`` files of one entry."""
    root, root_name, seed, (modality, imageset, subject, roi), n_images, n_voxels = work
    h5, npy = ned_file_paths(root, modality, imageset, subject, roi, root_name)
    h5.parent.mkdir(parents=True, exist_ok=True)
    if modality == "fmri":
        assert roi is not None
        nv = (n_voxels if isinstance(n_voxels, int) else
              (n_voxels or {}).get(roi) or roi_voxel_count(subject, roi))
        meta = _fmri_metadata(seed, imageset, subject, roi, nv, n_images)
        loadings = _fmri_loadings(seed, subject, roi, meta["fmri"])
        _write_h5(h5, n_images, (nv,),
                  lambda a, b: _fmri_rows(seed, imageset, subject, roi, a, b, loadings))
    else:
        meta = _eeg_metadata(seed, imageset, subject, n_images)
        _write_h5(h5, n_images, (4, 63, 140), lambda a, b: _eeg_rows(seed, imageset, subject,
                                                                     a, b))
    np.save(npy, np.asarray(meta, dtype=object), allow_pickle=True)


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
    """NSD's subjectim (8, 10000; first 1000 shared) and masterordering (30000,), 0-based."""
    rng = _rng(seed, "nsd-design")
    shared = np.arange(0, 3000, 3)
    others = np.setdiff1d(np.arange(73000), shared)
    own = rng.choice(others, (8, 9000), replace=False)
    subjectim = np.concatenate([np.broadcast_to(shared, (8, 1000)), own], axis=1)
    masterordering = rng.integers(0, 10000, 30000)
    return subjectim.astype(np.int64), masterordering.astype(np.int64)


def _labels(seed: int, imageset: str, n: int, subjectim: np.ndarray,
            masterordering: np.ndarray) -> dict[str, Any]:
    rng = _rng(seed, "labels", imageset)
    if imageset == "nsd":
        return {"subjectim": subjectim, "masterordering": masterordering}
    if imageset == "imagenet_val":
        return {"label_number": rng.integers(0, 1000, n),
                "label_names": np.array([f"imagenet class {i}" for i in range(1000)])}
    if imageset == "things":
        index = np.sort(rng.integers(0, len(_CONCEPTS), n))
        paths = [f"{_CONCEPTS[c]}/{_CONCEPTS[c]}_{i:02d}s.jpg" for i, c in enumerate(index)]
        return {"image_concept_index": index, "image_paths": np.array(paths),
                "unique_id": np.array(_CONCEPTS)}
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


def write_fwrf_weights(
    root: str | os.PathLike[str], subject: int, roi: str, *, n_voxels: int | None = None,
    seed: int = 0,
) -> list[Path]:
    """Write fwRF weights in NEST's original format: ``torch.save`` dicts of pickles.

    Each file holds ``{'args': argparse.Namespace(...), 'best_params': {'enc': encoder
    state_dict, 'fwrfs': {subject: readout state_dict}}, 'stim_mean': (1, 3, 1, 1),
    'train_history': ...}``, as NEST's training script saved them; ``lateral`` and
    ``ventral`` get ``_split-1.pt`` and ``_split-2.pt`` with the voxels split at
    ``ceil(n / 2)``.  Needs torch.

    Also writes the metadata file NEST keeps beside the weights
    (:func:`fwrf_metadata_path`): ``fmri{ncsnr, roi_mask_volume, fmri_affine}`` and
    ``encoding_models{r2, noise_ceiling, explained_variance, train_img_num, val_img_num,
    test_img_num}``, with the same voxels as :func:`write_ned`'s responses for that subject
    and ROI.

    Returns
    -------
    list of pathlib.Path
        The weight files written.
    """
    import argparse

    import torch

    n = n_voxels or roi_voxel_count(subject, roi)
    paths = fwrf_weight_paths(root, subject, roi)
    sizes = [n] if len(paths) == 1 else [(n + 1) // 2, n - (n + 1) // 2]
    for part, (path, size) in enumerate(zip(paths, sizes, strict=True), 1):
        enc, fwrf = fwrf_state_dicts(size, seed=seed + 1000 * part + subject)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({
            "args": argparse.Namespace(subject=subject, roi=roi, split=part, lr=1e-3,
                                       trunk_width=64, use_prefilter=1),
            "best_params": {"enc": {k: torch.from_numpy(v) for k, v in enc.items()},
                            "fwrfs": {subject: {k: torch.from_numpy(v)
                                                for k, v in fwrf.items()}}},
            "stim_mean": torch.from_numpy(enc["mu"]),
            "train_history": {"val_cc": np.linspace(0.1, 0.3, 5)},
        }, path)
    ned = _fmri_metadata(seed, "nsd", subject, roi, n, n_images=1)
    accuracy = ned["encoding_models"]["encoding_accuracy"]
    splits = ned["encoding_models"]["train_val_test_nsd_image_splits"]
    meta = {"fmri": ned["fmri"],
            "encoding_models": {"r2": accuracy["r2"], "noise_ceiling": accuracy["noise_ceiling"],
                                "explained_variance": accuracy["noise_normalized_encoding"],
                                **splits}}
    meta_path = fwrf_metadata_path(root, subject, roi)
    meta_path.parent.mkdir(parents=True, exist_ok=True)
    np.save(meta_path, np.asarray(meta, dtype=object), allow_pickle=True)
    return paths
