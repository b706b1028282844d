"""fwRF weights in NEST's original ``.pt`` format, with BERG's or NED's metadata file."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from nest_data.synthetic.responses import _fmri_metadata, _rng, _save_pickle, roi_voxel_count

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
