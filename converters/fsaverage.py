"""BERG's fsaverage encoders (``.npy`` dicts, one regression per hemisphere) to safetensors."""

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
    checked_array,
    provenance,
    scaler_pca,
    source_doc,
    weights_folder,
    write_folder,
)
from nest_data.converters._meta import meta_block
from nest_data.converters._pickle import load_npy_dict
from nest_data.errors import ConversionError, InputError, SourceFormatError

logger = logging.getLogger("nest_data")

FSAVERAGE_FORMAT = "nest-data fsaverage weights v1"
_FSAVERAGE_RE = re.compile(r"weights_subject-(?P<subject>\d+)\.npy$")
#: Source names of surface ROIs whose catalog name differs (NSD's label files say OWFA,
#: BERG's model card OVWFA).
_ROI_ALIASES = {"OVWFA": ("OVWFA", "OWFA")}


def discover_fsaverage(src: Path) -> dict[int, Path]:
    folder = weights_folder(src, "fmri", "nsd_fsaverage", "vit_b_32")
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
    found = discover_fsaverage(Path(src))
    subjects = as_set(subject)
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
        hemis = {h: (checked_array(doc[f"{h}_reg_param"], "coef_", path, 2),
                     checked_array(doc[f"{h}_reg_param"], "intercept_", path, 1))
                 for h in ("lh", "rh")}
        n_components = hemis["lh"][0].shape[1]
        head = scaler_pca(doc["scaler_param"], path, doc["pca_param"], path, n_components, path)
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
               "sources": [source_doc(p) for p in (path, meta_path) if p is not None],
               **provenance()}
        write_folder(tensors, out, dest, rel, storage_options)
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
