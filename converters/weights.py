"""Converting NEST's pickled encoder weights into safetensors + JSON.

NEST saved its fwRF encoders with ``torch.save``: pickles that can run arbitrary code when
loaded (they even hold an ``argparse.Namespace``).  This converter is the only place in
nest-data that unpickles them, and only when the caller says the files are trusted
(``trust_pickles=True``, ``--trust-pickles``).  What it writes needs no pickle to read:

``<root>/weights/modality-fmri/train_dataset-nsd/model-fwrf/sub-01_roi-V1/``
    ``weights.safetensors``  tensors ``part1.enc.<key>``, ``part1.fwrf.<key>`` (and
    ``part2.*`` for the second half of ``lateral``/``ventral``), in NEST's key layout;
    ``model.json``  what the tensors are (modality, subject, roi, parts, voxels per part),
    where they came from (file names, sizes, SHA-256) and the converter version.  It is
    written last, so a weights folder exists for readers only when complete.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from nest_data._catalog import Catalog
from nest_data._catalog import catalog as default_catalog
from nest_data._digest import file_digest
from nest_data._storage import is_local, local_path
from nest_data._store import commit, staging
from nest_data.converters._meta import fmri_voxel_labels, meta_block
from nest_data.converters._pickle import load_npy_dict
from nest_data.encoders.weights import MODEL_FILE, WEIGHTS_FILE
from nest_data.errors import ConversionError, SourceFormatError

logger = logging.getLogger("nest_data")

FORMAT = "nest-data fwrf weights v1"
_PT_RE = re.compile(r"weights_sub-(?P<subject>\d+)_roi-(?P<roi>.+?)(?:_split-(?P<part>\d))?\.pt$")

__all__ = ["MODEL_FILE", "WEIGHTS_FILE", "convert_fwrf_weights"]


def _discover(src: Path) -> dict[tuple[int, str], list[Path]]:
    folder = (src / "encoding_models" / "modality-fmri" / "train_dataset-nsd" / "model-fwrf"
              / "encoding_models_weights")
    if not folder.is_dir():
        folder = src
    found: dict[tuple[int, str], list[Path]] = {}
    for path in sorted(folder.glob("weights_sub-*_roi-*.pt")):
        match = _PT_RE.search(path.name)
        if match:
            key = (int(match["subject"]), match["roi"])
            found.setdefault(key, []).append(path)
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


def convert_fwrf_weights(
    src: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    trust_pickles: bool = False,
    subject: int | list[int] | None = None,
    roi: str | list[str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    catalog: Catalog | None = None,
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
    found = _discover(Path(src))
    subjects = {subject} if isinstance(subject, int) else set(subject or [])
    rois = {roi} if isinstance(roi, str) else set(roi or [])
    selected = {k: v for k, v in found.items()
                if (not subjects or k[0] in subjects) and (not rois or k[1] in rois)}
    if not selected:
        raise ConversionError(f"no fwRF weights under {src} match subject={subject!r}, "
                              f"roi={roi!r}; found {sorted(found) or 'none'}. Expected files "
                              "like encoding_models/modality-fmri/train_dataset-nsd/model-fwrf/"
                              "encoding_models_weights/weights_sub-01_roi-V1.pt")
    if is_local(dest):
        Path(local_path(dest)).mkdir(parents=True, exist_ok=True)
    written = []
    for (subj, region), paths in sorted(selected.items()):
        _, rel = cat.resolve_weights(modality="fmri", subject=subj, roi=region)
        _write_one(paths, subj, region, dest, rel, storage_options)
        written.append(rel)
        logger.info("converted fwRF weights sub-%02d %s -> %s", subj, region, rel)
    return written


def _write_one(paths: list[Path], subject: int, roi: str, dest: str | os.PathLike[str],
               rel: str, storage_options: Mapping[str, Any] | None) -> None:
    from safetensors.torch import save_file

    tensors: dict[str, Any] = {}
    parts: list[dict[str, Any]] = []
    for part, path in enumerate(sorted(paths), 1):
        part_tensors = _part_tensors(path, _load_trusted(path), subject, f"part{part}")
        tensors.update(part_tensors)
        parts.append({"file": path.name, "bytes": path.stat().st_size, "sha256": file_digest(path),
                      "n_voxels": int(part_tensors[f"part{part}.fwrf.w"].shape[0])})
    n_voxels = sum(p["n_voxels"] for p in parts)
    voxel_attrs = _voxel_labels(paths[0], subject, roi, n_voxels, tensors)
    doc = {
        "format": FORMAT, "modality": "fmri", "train_dataset": "nsd", "model": "fwrf",
        "subject": subject, "roi": roi, "parts": parts, "n_voxels": n_voxels,
        "voxel_attrs": voxel_attrs,
        "converter": f"nest-data {_version()} (nest_data.converters.weights)",
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    with staging(dest, rel) as stage:
        stage.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(stage / WEIGHTS_FILE), metadata={"format": FORMAT})
        doc["weights_sha256"] = file_digest(stage / WEIGHTS_FILE)
        (stage / MODEL_FILE).write_text(json.dumps(doc, indent=2))
        commit(stage, dest, rel, storage_options, last=MODEL_FILE)


def _voxel_labels(weights: Path, subject: int, roi: str, n_voxels: int,
                  tensors: dict[str, Any]) -> dict[str, Any]:
    """Add the voxel labels of NEST's metadata file (if present) as ``voxel.*`` tensors."""
    import torch

    path = weights.parent.parent / "metadata" / f"metadata_sub-{subject:02d}_roi-{roi}.npy"
    if not path.is_file():
        logger.warning("no metadata file %s: encoded responses will carry voxel indices only",
                       path)
        return {}
    meta = load_npy_dict(path)  # numpy-only allow-list: no trust needed
    coords, attrs = fmri_voxel_labels(meta_block(meta, "fmri", path),
                                      meta_block(meta, "encoding_models", path), path,
                                      source_prefix="encoding_models")
    if len(coords["voxel"][1]) != n_voxels:
        raise SourceFormatError(f"{path}: roi_mask_volume has {len(coords['voxel'][1])} voxels "
                                f"but the weights predict {n_voxels}; the files do not belong "
                                "together")
    for name, (_, values, _) in coords.items():
        tensors[f"voxel.{name}"] = torch.from_numpy(np.ascontiguousarray(values))
    return attrs


def _version() -> str:
    from nest_data import __version__

    return __version__
