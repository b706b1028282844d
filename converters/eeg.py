"""BERG's (and NED's) EEG encoders (``.npy`` dicts) and the ViT-B/32 backbone to safetensors."""

from __future__ import annotations

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
from nest_data.converters._common import (
    as_set,
    checked_array,
    provenance,
    scaler_pca,
    source_doc,
    weights_folder,
    write_folder,
)
from nest_data.converters._meta import eeg_labels, meta_block
from nest_data.converters._pickle import load_npy_dict
from nest_data.errors import ConversionError, SourceFormatError

logger = logging.getLogger("nest_data")

EEG_FORMAT = "nest-data eeg weights v1"
BACKBONE_FORMAT = "nest-data vit_b_32 backbone v1"
_EEG_RE = re.compile(r"(?:weights_subject|LinearRegression_param_sub)-(?P<subject>\d+)\.npy$")


def discover_eeg(src: Path) -> dict[int, Path]:
    """Subject -> its weights file (BERG's ``weights_subject-SS.npy`` or NED's regressions)."""
    found: dict[int, Path] = {}
    for path in sorted(weights_folder(src, "eeg", "things_eeg_2", "vit_b_32").glob("*.npy")):
        match = _EEG_RE.search(path.name)
        if match:
            subject = int(match["subject"])
            if subject in found:
                raise SourceFormatError(f"{path.parent}: subject {subject} has weights in both "
                                        f"BERG's and NED's layout ({found[subject].name}, "
                                        f"{path.name}); keep one")
            found[subject] = path
    return found


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
    coef = np.stack([checked_array(reg_doc[r], "coef_", reg_path, 2) for r in reps])
    intercept = np.stack([checked_array(reg_doc[r], "intercept_", reg_path, 1) for r in reps])
    head = scaler_pca(scaler_doc, scaler_path, pca_doc, pca_path, coef.shape[2], reg_path)
    head.update({"reg.coef_": coef, "reg.intercept_": intercept})
    if intercept.shape != coef.shape[:2]:
        raise SourceFormatError(f"{reg_path}: intercept_ shape {intercept.shape[1:]} does not "
                                f"match coef_ {coef.shape[1:]}")
    return head, files, layout


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
    found = discover_eeg(Path(src))
    subjects = as_set(subject)
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
               "sources": [source_doc(f) for f in files], **labels, **provenance()}
        write_folder(tensors, doc, dest, rel, storage_options)
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
           "sources": [source_doc(source)], **provenance()}
    write_folder({k: v.detach().contiguous() for k, v in state.items()}, doc, dest, rel,
                  storage_options)
    logger.info("converted %s -> %s", source.name, rel)
    return rel
