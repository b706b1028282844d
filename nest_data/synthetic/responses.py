"""Synthetic values and metadata of NED's entries, deterministic in ``seed``.

Every image set has a few latent image features shared by all subjects and ROIs, every ROI
mixes them with its own spatially smooth voxel loadings, voxels differ in reliability
(``ncsnr``), and EEG responses are evoked waveforms whose amplitudes depend on the same image
features.  The metadata dicts have the containers NED's creation scripts wrote.  **The numbers
are synthetic**; only the formats are the publishers'.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

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


def _save_pickle(path: Path, obj: Any) -> None:
    np.save(path, np.asarray(obj, dtype=object), allow_pickle=True)

