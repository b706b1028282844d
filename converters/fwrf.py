"""NEST's fwRF encoders (pickled ``.pt`` training checkpoints) to safetensors."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from nest_data import _config
from nest_data._catalog import Catalog
from nest_data._catalog import catalog as default_catalog
from nest_data.converters._common import (
    as_set,
    provenance,
    source_doc,
    weights_folder,
    write_folder,
)
from nest_data.converters._meta import fmri_voxel_labels, meta_block
from nest_data.converters._pickle import load_npy_dict
from nest_data.errors import ConversionError, SourceFormatError

logger = logging.getLogger("nest_data")

FORMAT = "nest-data fwrf weights v1"
# A weights file's whole name (fullmatch); the ROI is checked against the catalog.
_PT_RE = re.compile(r"weights_sub-(?P<subject>\d+)_roi-(?P<roi>.+?)"
                    r"(?:_split-(?P<part>[1-9]\d*))?\.pt")


def discover_fwrf(src: Path, catalog: Catalog | None = None) -> dict[tuple[int, str], list[Path]]:
    """(subject, ROI) -> its fwRF weight file, or its two halves, under ``src``.

    Only ``weights_sub-SS_roi-R.pt`` and ``weights_sub-SS_roi-R_split-1.pt`` /
    ``_split-2.pt`` with ``SS`` a subject and ``R`` an ROI of the catalog's fmri/nsd/fwrf
    model are weights; every other ``.pt`` file (NED's training outputs
    ``weights_sub-01_roi-V1train_phase-02.pt``, all-subject models ``weights_sub-all_...``)
    is skipped with a log line.

    Raises
    ------
    SourceFormatError
        An ROI has one half of a split pair, or both whole and split files.
    """
    spec = next((m for m in (catalog or default_catalog()).models
                 if m.name == "fmri/nsd/fwrf"), None)
    if spec is None:  # a catalog without the model: nothing here can be converted
        return {}
    folder = weights_folder(src, "fmri", "nsd", "fwrf")
    found: dict[tuple[int, str], list[Path]] = {}
    parts: dict[tuple[int, str], list[int]] = {}
    for path in sorted(folder.glob("*.pt")):
        match = _PT_RE.fullmatch(path.name)
        if match is None or int(match["subject"]) not in spec.subjects or (
                match["roi"] not in spec.rois):
            logger.info("skipping %s: not an fwRF weights file (expected weights_sub-SS_roi-"
                        "ROI.pt or weights_sub-SS_roi-ROI_split-1.pt/_split-2.pt, with SS one "
                        "of the subjects %s and ROI one of %s)", path,
                        ", ".join(f"{s:02d}" for s in spec.subjects), ", ".join(spec.rois))
            continue
        key = (int(match["subject"]), match["roi"])
        found.setdefault(key, []).append(path)
        parts.setdefault(key, []).append(int(match["part"] or 0))
    for key, numbers in parts.items():
        if sorted(numbers) not in ([0], [1, 2]):
            stem = f"weights_sub-{key[0]:02d}_roi-{key[1]}"
            raise SourceFormatError(
                f"{folder}: the fwRF weights of subject {key[0]} {key[1]} are "
                f"{', '.join(p.name for p in found[key])}; expected either {stem}.pt or both "
                f"halves {stem}_split-1.pt and {stem}_split-2.pt. Download the missing half "
                "(or remove the extra file) and convert again.")
    return found


def _load_trusted(path: Path) -> Mapping[str, Any]:
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)  # trusted by caller
    except Exception as exc:
        raise SourceFormatError(f"{path}: cannot be loaded as a torch file ({exc}); "
                                "re-download it") from exc
    if not isinstance(obj, Mapping) or "best_params" not in obj:
        raise SourceFormatError(f"{path}: not a NEST fwRF weights file (expected a dict with "
                                "'best_params' and 'stim_mean')")
    return obj


def _part_tensors(path: Path, obj: Mapping[str, Any], subject: int, prefix: str
                  ) -> dict[str, Any]:
    best = obj["best_params"]
    try:
        enc = best["enc"]
        fwrfs = best["fwrfs"]
    except (KeyError, TypeError) as exc:
        raise SourceFormatError(f"{path}: best_params lacks {exc}; expected 'enc' and "
                                "'fwrfs'") from exc
    if not isinstance(fwrfs, Mapping):
        raise SourceFormatError(f"{path}: best_params['fwrfs'] is not a dict of readouts")
    readout = fwrfs.get(subject, fwrfs.get(str(subject)))
    if readout is None:
        raise SourceFormatError(f"{path}: best_params['fwrfs'] has no readout for subject "
                                f"{subject} (has {sorted(fwrfs)})")
    tensors = {f"{prefix}.enc.{k}": v.detach().contiguous() for k, v in enc.items()}
    tensors.update({f"{prefix}.fwrf.{k}": v.detach().contiguous() for k, v in readout.items()})
    if f"{prefix}.enc.mu" not in tensors and "stim_mean" in obj:
        tensors[f"{prefix}.enc.mu"] = obj["stim_mean"].detach().contiguous()
    return tensors


@_config.progress_option
def convert_fwrf_weights(
    src: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    trust_pickles: bool = False,
    subject: int | list[int] | None = None,
    roi: str | list[str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    catalog: Catalog | None = None,
    show_progress: bool | None = None,
) -> list[str]:
    """Convert NEST's fwRF ``.pt`` weights into safetensors + JSON under ``dest``.

    Parameters
    ----------
    src : path
        NEST's root (holding ``encoding_models/``) or the ``encoding_models_weights`` folder.
    dest : path or URL
        Root to write ``weights/...`` folders into (see the catalog's ``weights_path``).
    trust_pickles : bool
        Required: NEST's files are pickles, which can run code when loaded.  Pass True only
        for files from a source you trust (the official NEST/BERG buckets).
    subject, roi : optional
        Convert only these (scalars or lists).
    storage_options : dict, optional
        fsspec options for a remote ``dest``.
    show_progress : bool, optional
        Progress bar over the encoders converted.

    Returns
    -------
    list of str
        The weights folders written, relative to ``dest``.

    Raises
    ------
    ConversionError
        ``trust_pickles`` is False, or no weights match.
    SourceFormatError
        A file is not a NEST fwRF weights file.
    """
    if not trust_pickles:
        raise ConversionError(
            "NEST's .pt weight files are pickles, and loading a pickle can run arbitrary code. "
            "Convert them only if they come from a source you trust (the official NEST/BERG "
            "buckets): pass trust_pickles=True (CLI: --trust-pickles). nest-data never loads "
            "pickles anywhere else; the converted safetensors files are safe to share."
        )
    cat = catalog or default_catalog()
    found = discover_fwrf(Path(src), cat)
    subjects, rois = as_set(subject), as_set(roi)
    selected = {k: v for k, v in found.items()
                if (not subjects or k[0] in subjects) and (not rois or k[1] in rois)}
    if not selected:
        raise ConversionError(f"no fwRF weights under {src} match subject={subject!r}, "
                              f"roi={roi!r}; found {sorted(found) or 'none'}. Expected files "
                              "like encoding_models/modality-fmri/train_dataset-nsd/model-fwrf/"
                              "encoding_models_weights/weights_sub-01_roi-V1.pt")
    written = []
    for (subj, region), paths in tqdm(sorted(selected.items()), desc="converting fwRF weights",
                                      unit="encoder",
                                      disable=not _config.show_progress()):
        _, rel = cat.resolve_weights(modality="fmri", subject=subj, roi=region)
        _write_one(paths, subj, region, dest, rel, storage_options)
        written.append(rel)
        logger.info("converted fwRF weights sub-%02d %s -> %s", subj, region, rel)
    return written


def _write_one(paths: list[Path], subject: int, roi: str, dest: str | os.PathLike[str],
               rel: str, storage_options: Mapping[str, Any] | None) -> None:
    tensors: dict[str, Any] = {}
    parts: list[dict[str, Any]] = []
    for part, path in enumerate(sorted(paths), 1):
        part_tensors = _part_tensors(path, _load_trusted(path), subject, f"part{part}")
        tensors.update(part_tensors)
        parts.append({**source_doc(path),
                      "n_voxels": int(part_tensors[f"part{part}.fwrf.w"].shape[0])})
    n_voxels = sum(p["n_voxels"] for p in parts)
    voxel_attrs = _voxel_labels(paths[0], subject, roi, n_voxels, tensors)
    doc = {
        "format": FORMAT, "modality": "fmri", "train_dataset": "nsd", "model": "fwrf",
        "subject": subject, "roi": roi, "parts": parts, "n_voxels": n_voxels,
        "voxel_attrs": voxel_attrs,
        **provenance(),
    }
    write_folder(tensors, doc, dest, rel, storage_options)


def _voxel_labels(weights: Path, subject: int, roi: str, n_voxels: int,
                  tensors: dict[str, Any]) -> dict[str, Any]:
    """Add an encoder's voxel labels as ``voxel.*`` tensors; return its volume attributes.

    The labels come from the first of:

    1. The metadata file ``metadata/metadata_sub-SS_roi-R.npy`` beside the weights folder,
       in BERG's layout (``encoding_models{r2, noise_ceiling, explained_variance, ...}``)
       or NED's (``encoding_models{encoding_accuracy{r2, noise_ceiling,
       noise_normalized_encoding}, train_val_test_nsd_image_splits}``), with
       ``fmri{ncsnr, roi_mask_volume, fmri_affine}``.
    2. ``betas_info[subject]`` of the (first) weights file, which NED's training script
       saved: ``ncsnr``, ``roi_mask_volume`` and ``fmri_affine`` of the whole ROI, but no
       accuracies.  Without ``fmri_affine`` the voxels get ``i, j, k`` but no ``x, y, z``.
    3. Nothing: the voxels carry their index only.
    """
    import torch

    path = weights.parent.parent / "metadata" / f"metadata_sub-{subject:02d}_roi-{roi}.npy"
    if path.is_file():
        meta = load_npy_dict(path)  # numpy-only allow-list: no trust needed
        encoding = meta_block(meta, "encoding_models", path)
        if isinstance(encoding.get("encoding_accuracy"), Mapping):  # NED's layout
            accuracy, prefix = encoding["encoding_accuracy"], "encoding_models.encoding_accuracy"
        else:  # BERG's layout
            accuracy, prefix = encoding, "encoding_models"
        coords, attrs = fmri_voxel_labels(meta_block(meta, "fmri", path), accuracy, path,
                                          source_prefix=prefix)
        mask_field = "fmri.roi_mask_volume"
        logger.info("sub-%02d %s: voxel labels from %s (%s): %s", subject, roi, path,
                    "NED's layout" if prefix != "encoding_models" else "BERG's layout",
                    ", ".join(coords))
    else:
        info = _betas_info(weights, subject)
        if info is None:
            logger.warning("no metadata file %s and no betas_info in %s: encoded responses "
                           "will carry voxel indices only", path, weights.name)
            return {}
        block = f"betas_info[{subject}]"
        coords, attrs = fmri_voxel_labels(info, {}, weights, source_prefix=block,
                                          block_name=block, require_affine=False)
        logger.warning("no metadata file %s: voxel labels from %s of %s: %s (no r2, noise "
                       "ceiling or explained variance%s)", path, block, weights,
                       ", ".join(coords), "" if "x" in coords else "; no fmri_affine, so "
                       "no x, y, z")
        path, mask_field = weights, f"{block}.roi_mask_volume"
    if len(coords["voxel"][1]) != n_voxels:
        raise SourceFormatError(f"{path}: {mask_field} has {len(coords['voxel'][1])} voxels "
                                f"but the weights predict {n_voxels}; the files do not belong "
                                "together")
    for name, (_, values, _) in coords.items():
        tensors[f"voxel.{name}"] = torch.from_numpy(np.ascontiguousarray(values))
    return attrs


def _betas_info(weights: Path, subject: int) -> Mapping[str, Any] | None:
    """``betas_info[subject]`` of a fwRF weights file (None if the file has none).

    NED's training script stored there the prepared fMRI data's dict without its betas
    (``ncsnr``, ``roi_mask_volume``, ``fmri_affine``, ``volume_shape``, NSD's design and
    image splits), keyed by the subject number.
    """
    info = _load_trusted(weights).get("betas_info")
    if info is None:
        return None
    block = info.get(subject, info.get(str(subject))) if isinstance(info, Mapping) else None
    if not isinstance(block, Mapping):
        found = sorted(info, key=str) if isinstance(info, Mapping) else type(info).__name__
        raise SourceFormatError(f"{weights}: betas_info has no dict for subject {subject} "
                                f"(found {found}); NED's training script keys it by the "
                                "subject number. The file is not this subject's weights or "
                                "is damaged: re-download it.")
    return block
