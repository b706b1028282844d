"""Converting NEST's pickled encoder weights into safetensors + JSON.

NEST saved its fwRF encoders with ``torch.save``: pickles that can run arbitrary code when
loaded (they even hold an ``argparse.Namespace``).  This converter is the only place in
nest-data that unpickles them, and only when the caller says the files are trusted
(``trust_pickles=True``, ``--trust-pickles``).  The EEG encoders' ``.npy`` files are pickled
dicts of numpy arrays only, which the numpy-only allow-list unpickler reads without trust;
torchvision's ViT-B/32 file is read with ``torch.load(weights_only=True)``, which accepts
tensors only.  What the converters write needs no pickle to read:

``<root>/weights/modality-fmri/train_dataset-nsd/model-fwrf/sub-01_roi-V1/``
    ``weights.safetensors``  tensors ``part1.enc.<key>``, ``part1.fwrf.<key>`` (and
    ``part2.*`` for the second half of ``lateral``/``ventral``), in NEST's key layout;
    ``model.json``  what the tensors are (modality, subject, roi, parts, voxels per part),
    where they came from (file names, sizes, SHA-256) and the converter version.  It is
    written last, so a weights folder exists for readers only when complete.

``<root>/weights/modality-eeg/train_dataset-things_eeg_2/model-vit_b_32/sub-01/``
    ``weights.safetensors``  ``scaler.mean_``, ``scaler.scale_``, ``pca.components_`` (the
    components the regressions use), ``pca.mean_``, ``reg.coef_`` (4, 8820, n_components),
    ``reg.intercept_`` (4, 8820) and the accuracy maps as ``coord.<name>``;
    ``model.json``  channel names, times, the layout it came from (BERG or NED) and sources.

``<root>/weights/modality-fmri/train_dataset-nsd_fsaverage/model-vit_b_32/sub-01/``
    the same scaler and PCA, ``lh.coef_``/``lh.intercept_`` and ``rh.*`` (one regression
    per hemisphere), per-vertex labels ``vertex.*``, ROI vertex indices ``roi.*``.

``<root>/weights/backbones/vit_b_32-imagenet1k_v1/``
    torchvision's ``vit_b_32`` state_dict, keys unchanged.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np
from tqdm.auto import tqdm

from nest_data import _config
from nest_data._catalog import Catalog
from nest_data._catalog import catalog as default_catalog
from nest_data._digest import file_digest
from nest_data._staging import commit, staging
from nest_data._storage import is_local, local_path
from nest_data.converters._meta import eeg_labels, fmri_voxel_labels, meta_block
from nest_data.converters._pickle import load_npy_dict
from nest_data.encoders.weights import MODEL_FILE, WEIGHTS_FILE
from nest_data.errors import ConversionError, InputError, SourceFormatError

logger = logging.getLogger("nest_data")

FORMAT = "nest-data fwrf weights v1"
EEG_FORMAT = "nest-data eeg weights v1"
BACKBONE_FORMAT = "nest-data vit_b_32 backbone v1"
FSAVERAGE_FORMAT = "nest-data fsaverage weights v1"
# A weights file's whole name (fullmatch); the ROI is checked against the catalog.
_PT_RE = re.compile(r"weights_sub-(?P<subject>\d+)_roi-(?P<roi>.+?)"
                    r"(?:_split-(?P<part>[1-9]\d*))?\.pt")
_EEG_RE = re.compile(r"(?:weights_subject|LinearRegression_param_sub)-(?P<subject>\d+)\.npy$")

__all__ = ["MODEL_FILE", "WEIGHTS_FILE", "convert_eeg_weights", "convert_fsaverage_weights",
           "convert_fwrf_weights", "convert_vit_b_32", "convert_weights"]


def _weights_folder(src: Path, modality: str, train_dataset: str, model: str) -> Path:
    """NEST's ``encoding_models_weights`` folder of a model under ``src``, else ``src`` itself."""
    folder = (src / "encoding_models" / f"modality-{modality}" / f"train_dataset-{train_dataset}"
              / f"model-{model}" / "encoding_models_weights")
    return folder if folder.is_dir() else src


def _as_set(value: Any) -> set[Any]:
    """A filter given as one value, a list, or None (no filter: the empty set)."""
    if value is None:
        return set()
    return {value} if isinstance(value, (int, str)) else set(value)


def _discover(src: Path, catalog: Catalog | None = None) -> dict[tuple[int, str], list[Path]]:
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
    folder = _weights_folder(src, "fmri", "nsd", "fwrf")
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
    found = _discover(Path(src), cat)
    subjects, rois = _as_set(subject), _as_set(roi)
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
        parts.append({**_source(path),
                      "n_voxels": int(part_tensors[f"part{part}.fwrf.w"].shape[0])})
    n_voxels = sum(p["n_voxels"] for p in parts)
    voxel_attrs = _voxel_labels(paths[0], subject, roi, n_voxels, tensors)
    doc = {
        "format": FORMAT, "modality": "fmri", "train_dataset": "nsd", "model": "fwrf",
        "subject": subject, "roi": roi, "parts": parts, "n_voxels": n_voxels,
        "voxel_attrs": voxel_attrs,
        **_provenance(),
    }
    _write_folder(tensors, doc, dest, rel, storage_options)


def _write_folder(tensors: dict[str, Any], doc: dict[str, Any], dest: str | os.PathLike[str],
                  rel: str, storage_options: Mapping[str, Any] | None) -> None:
    """Write ``weights.safetensors`` and then ``model.json`` (with its SHA-256), atomically."""
    from safetensors.torch import save_file

    with staging(dest, rel) as stage:
        stage.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(stage / WEIGHTS_FILE), metadata={"format": doc["format"]})
        doc["weights_sha256"] = file_digest(stage / WEIGHTS_FILE)
        (stage / MODEL_FILE).write_text(json.dumps(doc, indent=2))
        commit(stage, dest, rel, storage_options, last=MODEL_FILE)


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


def _provenance() -> dict[str, str]:
    from nest_data import __version__

    return {"converter": f"nest-data {__version__} (nest_data.converters.weights)",
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}


def _source(path: Path) -> dict[str, Any]:
    return {"file": path.name, "bytes": path.stat().st_size, "sha256": file_digest(path)}


# --------------------------------------------------------------------------------------
# EEG encoders (ViT-B/32 features -> scaler -> PCA -> regressions) and their backbone
# --------------------------------------------------------------------------------------


def _discover_eeg(src: Path) -> dict[int, Path]:
    """Subject -> its weights file (BERG's ``weights_subject-SS.npy`` or NED's regressions)."""
    found: dict[int, Path] = {}
    for path in sorted(_weights_folder(src, "eeg", "things_eeg_2", "vit_b_32").glob("*.npy")):
        match = _EEG_RE.search(path.name)
        if match:
            subject = int(match["subject"])
            if subject in found:
                raise SourceFormatError(f"{path.parent}: subject {subject} has weights in both "
                                        f"BERG's and NED's layout ({found[subject].name}, "
                                        f"{path.name}); keep one")
            found[subject] = path
    return found


def _array(block: Mapping[str, Any], name: str, path: Path, ndim: int) -> np.ndarray:
    if not isinstance(block, Mapping) or name not in block:
        found = sorted(block) if isinstance(block, Mapping) else type(block).__name__
        raise SourceFormatError(f"{path}: expected a field {name!r}, found {found}")
    values = np.asarray(block[name])
    if values.ndim != ndim or values.dtype.kind not in "fiu":
        raise SourceFormatError(f"{path}: {name} is {values.dtype} with shape {values.shape}; "
                                f"expected a {ndim}-D numeric array")
    return values


def _eeg_head(path: Path) -> tuple[dict[str, np.ndarray], list[Path], str]:
    """The head's arrays from BERG's single file or NED's three; the files read; the layout."""
    if path.name.startswith("weights_subject-"):
        doc = load_npy_dict(path)
        blocks = {k: (doc.get(k), path) for k in ("scaler_param", "pca_param", "reg_param")}
        files, layout = [path], "berg"
    else:
        scaler, pca = path.parent / "StandardScaler_param.npy", path.parent / "pca_param.npy"
        for shared in (scaler, pca):
            if not shared.is_file():
                raise SourceFormatError(f"{path}: NED's EEG regressions need the shared "
                                        f"{shared.name} beside them; it is missing")
        blocks = {"scaler_param": (load_npy_dict(scaler), scaler),
                  "pca_param": (load_npy_dict(pca), pca), "reg_param": (load_npy_dict(path), path)}
        files, layout = [scaler, pca, path], "ned"
    (scaler_doc, scaler_path), (pca_doc, pca_path), (reg_doc, reg_path) = blocks.values()
    for name, (block, where) in blocks.items():
        if not isinstance(block, Mapping):
            raise SourceFormatError(f"{where}: not a NEST EEG weights file (no {name!r} dict)")
    reg_doc = cast(Mapping[str, Any], reg_doc)  # checked just above
    reps = sorted((k for k in reg_doc if re.fullmatch(r"rep-\d+", str(k))),
                  key=lambda k: int(k.split("-")[1]))
    if not reps:
        raise SourceFormatError(f"{reg_path}: no 'rep-1'.. regression blocks (found "
                                f"{sorted(reg_doc)})")
    coef = np.stack([_array(reg_doc[r], "coef_", reg_path, 2) for r in reps])
    intercept = np.stack([_array(reg_doc[r], "intercept_", reg_path, 1) for r in reps])
    head = _scaler_pca(scaler_doc, scaler_path, pca_doc, pca_path, coef.shape[2], reg_path)
    head.update({"reg.coef_": coef, "reg.intercept_": intercept})
    if intercept.shape != coef.shape[:2]:
        raise SourceFormatError(f"{reg_path}: intercept_ shape {intercept.shape[1:]} does not "
                                f"match coef_ {coef.shape[1:]}")
    return head, files, layout


def _scaler_pca(scaler_doc: Mapping[str, Any], scaler_path: Path, pca_doc: Mapping[str, Any],
                pca_path: Path, n_components: int, reg_path: Path) -> dict[str, np.ndarray]:
    """``scaler.mean_``, ``scaler.scale_``, ``pca.components_`` (the first ``n_components``,
    which the regressions use) and ``pca.mean_`` of a ViT-B/32 encoder, shapes checked."""
    components = _array(pca_doc, "components_", pca_path, 2)
    if components.shape[0] < n_components:
        raise SourceFormatError(f"{pca_path}: {components.shape[0]} PCA components, but the "
                                f"regressions of {reg_path.name} use {n_components}")
    head = {"scaler.mean_": _array(scaler_doc, "mean_", scaler_path, 1),
            "scaler.scale_": _array(scaler_doc, "scale_", scaler_path, 1),
            "pca.components_": components[:n_components],  # NED kept 1,000 and used 250
            "pca.mean_": _array(pca_doc, "mean_", pca_path, 1)}
    n_features = components.shape[1]
    for name in ("scaler.mean_", "scaler.scale_", "pca.mean_"):
        if head[name].shape != (n_features,):
            where = scaler_path if name.startswith("scaler") else pca_path
            raise SourceFormatError(f"{where}: {name} has shape {head[name].shape}; the PCA "
                                    f"components have {n_features} features")
    return head


@_config.progress_option
def convert_eeg_weights(
    src: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    subject: int | list[int] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    catalog: Catalog | None = None,
    show_progress: bool | None = None,
) -> list[str]:
    """Convert NEST's EEG encoders (BERG's or NED's layout) into safetensors + JSON.

    BERG keeps one ``weights_subject-{SS}.npy`` per subject; NED shares
    ``StandardScaler_param.npy`` and ``pca_param.npy`` (1,000 components, of which the
    regressions use the first 250) and keeps ``LinearRegression_param_sub-{SS}.npy`` per
    subject.  Both become one self-contained folder per subject.  The files are pickled
    dicts of numpy arrays, read with a numpy-only allow-list (no trust flag needed).
    Channel names, times and accuracy maps come from ``metadata/metadata_subject-{SS}.npy``.

    Parameters
    ----------
    src : path
        NEST's root (holding ``encoding_models/``) or the ``encoding_models_weights`` folder.
    dest : path or URL
        Root to write ``weights/...`` folders into.
    subject : int or list of int, optional
        Convert only these subjects.
    storage_options : dict, optional
        fsspec options for a remote ``dest``.
    show_progress : bool, optional
        Progress bar over the encoders converted.

    Returns
    -------
    list of str
        The weights folders written, relative to ``dest``.

    Examples
    --------
    >>> import tempfile
    >>> from nest_data.synthetic import write_eeg_weights
    >>> src, dest = tempfile.mkdtemp(), tempfile.mkdtemp()
    >>> _ = write_eeg_weights(src, 3, n_components=2)
    >>> convert_eeg_weights(src, dest)
    ['weights/modality-eeg/train_dataset-things_eeg_2/model-vit_b_32/sub-03']
    """
    import torch

    cat = catalog or default_catalog()
    found = _discover_eeg(Path(src))
    subjects = _as_set(subject)
    selected = {s: p for s, p in found.items() if not subjects or s in subjects}
    if not selected:
        raise ConversionError(f"no EEG weights under {src} match subject={subject!r}; found "
                              f"subjects {sorted(found) or 'none'}. Expected files like "
                              "encoding_models/modality-eeg/train_dataset-things_eeg_2/"
                              "model-vit_b_32/encoding_models_weights/weights_subject-01.npy")
    written = []
    for subj, path in tqdm(sorted(selected.items()), desc="converting EEG weights",
                           unit="subject", disable=not _config.show_progress()):
        head, files, layout = _eeg_head(path)
        n_rep, n_out, n_components = head["reg.coef_"].shape
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))
                   for k, v in head.items()}
        labels = _eeg_labels(path, subj, (n_rep, n_out), tensors)
        spec, rel = cat.resolve_weights(modality="eeg", subject=subj)
        doc = {"format": EEG_FORMAT, "modality": "eeg", "train_dataset": spec.train_dataset,
               "model": spec.model, "subject": subj, "layout": layout,
               "n_components": n_components, "n_features": int(head["pca.mean_"].shape[0]),
               "sources": [_source(f) for f in files], **labels, **_provenance()}
        _write_folder(tensors, doc, dest, rel, storage_options)
        written.append(rel)
        logger.info("converted EEG weights sub-%02d (%s layout) -> %s", subj, layout, rel)
    return written


def _eeg_labels(weights: Path, subject: int, shape: tuple[int, int],
                tensors: dict[str, Any]) -> dict[str, Any]:
    """Channel names and times for ``model.json``; accuracy maps as ``coord.*`` tensors."""
    import torch

    n_rep, n_out = shape
    meta_dir = weights.parent.parent / "metadata"
    candidates = [meta_dir / f"metadata_subject-{subject:02d}.npy",
                  meta_dir / f"metadata_sub-{subject:02d}.npy"]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        if n_out != 63 * 140:
            raise SourceFormatError(f"{weights}: regressions predict {n_out} values and there is "
                                    f"no metadata file ({candidates[0]}) to say their channels "
                                    "and times; NEST's EEG encoders predict 63 x 140")
        logger.warning("no metadata file %s: encoded EEG responses will carry channel and "
                       "time indices only", candidates[0])
        return {"channels": [str(c) for c in range(63)], "times": list(range(140)),
                "shape": [n_rep, 63, 140], "coords": {}}
    meta = load_npy_dict(path)
    eeg = meta_block(meta, "eeg", path)
    n_ch, n_t = len(eeg.get("ch_names", ())), len(eeg.get("times", ()))
    if n_ch * n_t != n_out:
        raise SourceFormatError(f"{path}: {n_ch} channels x {n_t} times, but the regressions "
                                f"of {weights.name} predict {n_out} values; the files do not "
                                "belong together")
    encoding = meta.get("encoding_models") or {}
    if isinstance(encoding.get("encoding_accuracy"), Mapping):  # NED's metadata form
        encoding = encoding["encoding_accuracy"]
    accuracy = {k: v for k, v in encoding.items()
                if isinstance(v, np.ndarray) and v.dtype.kind == "f"}
    coords = eeg_labels(eeg, accuracy, path, shape=(n_rep, n_ch, n_t))
    dims: dict[str, list[str]] = {}
    for name, (coord_dims, values, _) in coords.items():
        if name not in ("repetition", "channel", "time"):
            tensors[f"coord.{name}"] = torch.from_numpy(np.ascontiguousarray(values))
            dims[name] = list(coord_dims)
    return {"channels": coords["channel"][1].tolist(), "times": coords["time"][1].tolist(),
            "shape": [n_rep, n_ch, n_t], "coords": dims}


# --------------------------------------------------------------------------------------
# fMRI fsaverage encoders (ViT-B/32 features -> scaler -> PCA -> one regression per hemisphere)
# --------------------------------------------------------------------------------------

_FSAVERAGE_RE = re.compile(r"weights_subject-(?P<subject>\d+)\.npy$")
#: Source names of surface ROIs whose catalog name differs (NSD's label files say OWFA,
#: BERG's model card OVWFA).
_ROI_ALIASES = {"OVWFA": ("OVWFA", "OWFA")}


def _discover_fsaverage(src: Path) -> dict[int, Path]:
    folder = _weights_folder(src, "fmri", "nsd_fsaverage", "vit_b_32")
    if folder == src and (src / "encoding_models").is_dir():
        return {}  # a NEST root without this model
    found = {}
    for path in sorted(folder.glob("weights_subject-*.npy")):
        match = _FSAVERAGE_RE.search(path.name)
        if match:
            found[int(match["subject"])] = path
    return found


@_config.progress_option
def convert_fsaverage_weights(
    src: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    subject: int | list[int] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    catalog: Catalog | None = None,
    show_progress: bool | None = None,
) -> list[str]:
    """Convert BERG's fsaverage encoders (``fmri-nsd_fsaverage-vit_b_32``) to safetensors + JSON.

    Reads ``weights_subject-{SS}.npy`` (scaler, PCA, and one linear regression per
    hemisphere over its 163,842 vertices) and ``metadata/metadata_subject-{SS}.npy``
    (per-hemisphere ncsnr, accuracies and the surface ROIs' vertex selections), both
    pickled dicts of numpy arrays read with the numpy-only allow-list unpickler.  The folder
    written holds ``scaler.*``, ``pca.*``, ``lh.coef_``, ``lh.intercept_``, ``rh.*``; the
    per-vertex labels as ``vertex.<name>`` over both hemispheres (left first); each ROI as
    ``roi.<name>``, the global indices of its vertices (right-hemisphere indices offset by
    the left hemisphere's size); and NSD's image splits as ``split.*``.

    Parameters
    ----------
    src : path
        BERG's root (holding ``encoding_models/``) or the ``encoding_models_weights`` folder.
    dest : path or URL
        Root to write ``weights/...`` folders into.
    subject : int or list of int, optional
        Convert only these subjects.
    storage_options : dict, optional
        fsspec options for a remote ``dest``.
    show_progress : bool, optional
        Progress bar over the encoders converted.

    Returns
    -------
    list of str
        The weights folders written, relative to ``dest``.

    Examples
    --------
    >>> import tempfile
    >>> from nest_data.synthetic import write_fsaverage_weights
    >>> src, dest = tempfile.mkdtemp(), tempfile.mkdtemp()
    >>> _ = write_fsaverage_weights(src, 2, n_components=2, n_vertices=642)
    >>> convert_fsaverage_weights(src, dest)
    ['weights/modality-fmri/train_dataset-nsd_fsaverage/model-vit_b_32/sub-02']
    """
    import torch

    cat = catalog or default_catalog()
    found = _discover_fsaverage(Path(src))
    subjects = _as_set(subject)
    selected = {s: p for s, p in found.items() if not subjects or s in subjects}
    if not selected:
        raise ConversionError(f"no fsaverage weights under {src} match subject={subject!r}; "
                              f"found subjects {sorted(found) or 'none'}. Expected files like "
                              "encoding_models/modality-fmri/train_dataset-nsd_fsaverage/"
                              "model-vit_b_32/encoding_models_weights/weights_subject-01.npy")
    written = []
    for subj, path in tqdm(sorted(selected.items()), desc="converting fsaverage weights",
                           unit="subject", disable=not _config.show_progress()):
        spec, rel = cat.resolve_weights(train_dataset="nsd_fsaverage", model="vit_b_32",
                                        subject=subj)
        doc = load_npy_dict(path)
        for name in ("scaler_param", "pca_param", "lh_reg_param", "rh_reg_param"):
            if not isinstance(doc.get(name), Mapping):
                raise SourceFormatError(f"{path}: not a BERG fsaverage weights file (no {name!r} "
                                        f"dict; found {sorted(doc)})")
        hemis = {h: (_array(doc[f"{h}_reg_param"], "coef_", path, 2),
                     _array(doc[f"{h}_reg_param"], "intercept_", path, 1)) for h in ("lh", "rh")}
        n_components = hemis["lh"][0].shape[1]
        head = _scaler_pca(doc["scaler_param"], path, doc["pca_param"], path, n_components, path)
        for h, (coef, intercept) in hemis.items():
            if coef.shape[1] != n_components or intercept.shape != coef.shape[:1]:
                raise SourceFormatError(f"{path}: {h}_reg_param has coef_ {coef.shape} and "
                                        f"intercept_ {intercept.shape}; expected (n_vertices, "
                                        f"{n_components}) and (n_vertices,) like lh_reg_param")
            head[f"{h}.coef_"], head[f"{h}.intercept_"] = coef, intercept
        sizes = {h: int(hemis[h][0].shape[0]) for h in hemis}
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))
                   for k, v in head.items()}
        labels, meta_path = _surface_metadata(path, subj, sizes, spec.rois, tensors)
        out = {"format": FSAVERAGE_FORMAT, "modality": "fmri",
               "train_dataset": spec.train_dataset, "model": spec.model, "subject": subj,
               "n_components": n_components, "n_features": int(head["pca.mean_"].shape[0]),
               "n_vertices": sizes, **labels,
               "sources": [_source(p) for p in (path, meta_path) if p is not None],
               **_provenance()}
        _write_folder(tensors, out, dest, rel, storage_options)
        written.append(rel)
        logger.info("converted fsaverage weights sub-%02d -> %s", subj, rel)
    return written


def _surface_metadata(weights: Path, subject: int, sizes: Mapping[str, int],
                      rois: tuple[str, ...], tensors: dict[str, Any]
                      ) -> tuple[dict[str, Any], Path | None]:
    """Per-vertex labels, ROI vertex indices and image splits of BERG's metadata file.

    Returns what ``model.json`` records (ROIs, their source names, the label names) and the
    metadata file read (None when there is none).
    """
    import torch

    path = weights.parent.parent / "metadata" / f"metadata_subject-{subject:02d}.npy"
    if not path.is_file():
        logger.warning("no metadata file %s: encoded responses will carry vertex indices "
                       "only, and roi= cannot select vertices", path)
        return {"rois": [], "roi_sources": {}, "vertex_labels": []}, None
    meta = load_npy_dict(path)
    fmri, encoding = meta_block(meta, "fmri", path), meta_block(meta, "encoding_models", path)
    names = {"ncsnr": fmri, "r2": encoding, "noise_ceiling": encoding,
             "explained_variance": encoding, "correlation": encoding}
    labels = []
    for name, block in names.items():
        parts = [block.get(f"{h}_{name}") for h in ("lh", "rh")]
        if any(p is None for p in parts):
            continue
        for h, part in zip(("lh", "rh"), parts, strict=True):
            if np.shape(part) != (sizes[h],):
                raise SourceFormatError(f"{path}: {h}_{name} has shape {np.shape(part)}; the "
                                        f"{h} regression predicts {sizes[h]} vertices, so the "
                                        "files do not belong together")
        tensors[f"vertex.{name}"] = torch.from_numpy(
            np.concatenate(parts).astype(np.float32))
        labels.append(name)
    sources: dict[str, str] = {}
    for roi in rois:
        found = []
        for h, offset in (("lh", 0), ("rh", sizes["lh"])):
            block = fmri.get(f"{h}_fsaverage_rois")
            if not isinstance(block, Mapping):
                raise SourceFormatError(f"{path}: fmri has no {h}_fsaverage_rois dict (found "
                                        f"{sorted(fmri)})")
            key = next((k for k in _ROI_ALIASES.get(roi, (roi,)) if k in block), None)
            if key is None:
                break
            sources[roi] = str(key)
            found.append(_vertex_selection(block[key], sizes[h], path, f"{h}_fsaverage_rois",
                                           str(key)) + offset)
        if len(found) == 2:
            tensors[f"roi.{roi}"] = torch.from_numpy(np.concatenate(found))
        else:
            logger.warning("%s: no vertex selection for ROI %s; roi=%r will not be available",
                           path, roi, roi)
            sources.pop(roi, None)
    for name in ("train_img_num", "val_img_num", "test_img_num"):
        if name in encoding:
            tensors[f"split.{name}"] = torch.from_numpy(
                np.ascontiguousarray(np.asarray(encoding[name], dtype=np.int64)))
    return ({"rois": sorted(sources, key=rois.index), "roi_sources": sources,
             "vertex_labels": labels}, path)


def _vertex_selection(value: Any, n: int, path: Path, block: str, name: str) -> np.ndarray:
    """A surface ROI's vertex indices, from an index array or a boolean (one-hot) mask."""
    from nest_data._encode import selection_indices

    try:
        return selection_indices(value, n, f"{block}[{name!r}]")
    except InputError as exc:
        raise SourceFormatError(f"{path}: {exc}; the metadata does not match the weights"
                                ) from exc


def convert_vit_b_32(
    path: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    storage_options: Mapping[str, Any] | None = None,
    catalog: Catalog | None = None,
) -> str:
    """Convert torchvision's ``vit_b_32`` weights file into safetensors under ``dest``.

    The EEG encoders' backbone is torchvision's ImageNet ViT-B/32 (IMAGENET1K_V1,
    ``vit_b_32-d86f8d99.pth``), which NEST does not ship: download it once on a machine with
    internet and convert it.  The file is read with ``torch.load(weights_only=True)``, which
    accepts tensors only, and checked key by key against torchvision's layout.

    Returns
    -------
    str
        The folder written, relative to ``dest`` (the catalog's ``backbone_path``).

    Raises
    ------
    SourceFormatError
        The file is missing, holds more than tensors, or is not torchvision's layout.

    Examples
    --------
    >>> import tempfile
    >>> convert_vit_b_32("vit_b_32-d86f8d99.pth", tempfile.mkdtemp())
    Traceback (most recent call last):
    ...
    nest_data.errors.SourceFormatError: vit_b_32-d86f8d99.pth: no such file; give ...
    """
    import torch

    from nest_data.encoders.vit import VitB32

    source = Path(path)
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise SourceFormatError(f"{source}: no such file; give torchvision's vit_b_32 weights "
                                "(vit_b_32-d86f8d99.pth)") from exc
    except Exception as exc:
        raise SourceFormatError(f"{source}: not a tensors-only torch file ({exc}); give "
                                "torchvision's vit_b_32 weights (vit_b_32-d86f8d99.pth)") from exc
    if not isinstance(state, Mapping):
        raise SourceFormatError(f"{source}: holds a {type(state).__name__}, not a state_dict")
    try:
        VitB32.from_state_dict(state)
    except ValueError as exc:
        raise SourceFormatError(f"{source}: {exc}") from exc
    cat = catalog or default_catalog()
    spec, _ = cat.resolve_weights(modality="eeg", subject=1)
    rel = spec.backbone_path
    doc = {"format": BACKBONE_FORMAT, "architecture": "torchvision vit_b_32",
           "sources": [_source(source)], **_provenance()}
    _write_folder({k: v.detach().contiguous() for k, v in state.items()}, doc, dest, rel,
                  storage_options)
    logger.info("converted %s -> %s", source.name, rel)
    return rel


@_config.progress_option
def convert_weights(
    src: str | os.PathLike[str] | None,
    dest: str | os.PathLike[str],
    *,
    modality: str | None = None,
    trust_pickles: bool = False,
    subject: int | list[int] | None = None,
    roi: str | list[str] | None = None,
    vit_b_32: str | os.PathLike[str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    source_options: Mapping[str, Any] | None = None,
    catalog: Catalog | None = None,
    show_progress: bool | None = None,
) -> list[str]:
    """Convert every encoder found under ``src`` (and the ViT-B/32 backbone, if given).

    fMRI fwRF weights need ``trust_pickles=True`` (see :func:`convert_fwrf_weights`); the
    ``.npy`` files of the EEG and fsaverage encoders do not (see :func:`convert_eeg_weights`,
    :func:`convert_fsaverage_weights`).  Without the flag, a root that holds both converts
    the ``.npy`` encoders and logs that it skipped the ``.pt`` files; a root holding only
    ``.pt`` files is an error that says to pass the flag.

    Parameters
    ----------
    src : path or URL, optional
        NEST's or BERG's root (holding ``encoding_models/``): a folder, or a remote root such
        as ``s3://brain-encoding-response-generator`` (with ``source_options={"anon":
        True}``), read one subject at a time; None converts only ``vit_b_32``.
    dest : path or URL
        Root to write ``weights/...`` into.
    modality : {"fmri", "eeg"}, optional
        Convert only this modality (default: whichever ``src`` holds).
    trust_pickles : bool
        Allow loading NEST's fwRF ``.pt`` pickles.
    subject, roi : optional
        Convert only these.
    vit_b_32 : path, optional
        torchvision's ``vit_b_32`` weights file, converted for the EEG encoders.
    storage_options : dict, optional
        fsspec options for a remote ``dest``.
    source_options : dict, optional
        fsspec options for a remote ``src`` (``{"anon": True}`` for the public buckets).
    show_progress : bool, optional
        Progress bar over the encoders converted.

    Returns
    -------
    list of str
        The folders written, relative to ``dest``.

    Examples
    --------
    >>> import tempfile
    >>> from nest_data.synthetic import write_eeg_weights, write_fwrf_weights
    >>> src, dest = tempfile.mkdtemp(), tempfile.mkdtemp()
    >>> _ = write_eeg_weights(src, 1, n_components=2)
    >>> _ = write_fwrf_weights(src, 1, "V1", n_voxels=4)
    >>> convert_weights(src, dest, modality="eeg")
    ['weights/modality-eeg/train_dataset-things_eeg_2/model-vit_b_32/sub-01']
    >>> convert_weights(src, dest)  # the fwRF .pt files are pickles: skipped, and logged
    ['weights/modality-eeg/train_dataset-things_eeg_2/model-vit_b_32/sub-01']
    >>> convert_weights(src, dest, modality="fmri")  # nothing else to convert
    Traceback (most recent call last):
    ...
    nest_data.errors.ConversionError: NEST's .pt weight files are pickles, ...
    >>> convert_weights(src, dest, modality="fmri", trust_pickles=True)
    ['weights/modality-fmri/train_dataset-nsd/model-fwrf/sub-01_roi-V1']
    """
    if modality not in (None, "fmri", "eeg"):
        raise ConversionError(f"modality={modality!r}; valid: 'fmri', 'eeg' or None for both")
    written: list[str] = []
    if vit_b_32 is not None:
        written.append(convert_vit_b_32(vit_b_32, dest, storage_options=storage_options,
                                        catalog=catalog))
    if src is None:
        return written
    if not is_local(os.fspath(src)):
        from nest_data.converters._remote import staged_subjects

        for _, local in staged_subjects(os.fspath(src), source_options or {},
                                        modality=modality, subjects=_as_set(subject) or None,
                                        pickles=trust_pickles):
            written += convert_weights(local, dest, modality=modality,
                                       trust_pickles=trust_pickles, roi=roi,
                                       storage_options=storage_options, catalog=catalog)
        return written
    if source_options:
        raise ConversionError(f"source_options={dict(source_options)!r} given, but SRC {src} is "
                              "a local folder; they are for a remote SRC (s3://..., gs://...)")
    root = Path(local_path(os.fspath(src)))
    has_fmri = bool(_discover(root, catalog)) if modality != "eeg" else False
    has_surface = bool(_discover_fsaverage(root)) if modality != "eeg" else False
    has_eeg = bool(_discover_eeg(root)) if modality != "fmri" else False
    if has_fmri and not trust_pickles and (has_surface or has_eeg):
        logger.warning("skipping NEST's fwRF .pt weights under %s: they are pickles; pass "
                       "trust_pickles=True (--trust-pickles) to convert them too", src)
        has_fmri = False
    if not (has_fmri or has_surface or has_eeg):
        raise ConversionError(f"no NEST encoder weights under {src} (modality={modality!r}); "
                              "expected encoding_models/modality-fmri/... (.pt or .npy) or "
                              "encoding_models/modality-eeg/... (.npy) folders")
    if has_surface:
        written += convert_fsaverage_weights(src, dest, subject=subject,
                                             storage_options=storage_options, catalog=catalog)
    if has_fmri:
        written += convert_fwrf_weights(src, dest, trust_pickles=trust_pickles, subject=subject,
                                        roi=roi, storage_options=storage_options,
                                        catalog=catalog)
    if has_eeg:
        written += convert_eeg_weights(src, dest, subject=subject,
                                       storage_options=storage_options, catalog=catalog)
    return written
