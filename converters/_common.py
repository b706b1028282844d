"""What every weights converter shares: folders, provenance, checked arrays."""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from nest_data._digest import file_digest
from nest_data._locks import writer_lock
from nest_data._staging import commit, no_space, staging
from nest_data.encoders.weights import MODEL_FILE, WEIGHTS_FILE
from nest_data.errors import SourceFormatError

logger = logging.getLogger("nest_data")


def weights_folder(src: Path, modality: str, train_dataset: str, model: str) -> Path:
    """NEST's ``encoding_models_weights`` folder of a model under ``src``, else ``src`` itself."""
    folder = (src / "encoding_models" / f"modality-{modality}" / f"train_dataset-{train_dataset}"
              / f"model-{model}" / "encoding_models_weights")
    return folder if folder.is_dir() else src


def as_set(value: Any) -> set[Any]:
    """A filter given as one value, a list, or None (no filter: the empty set)."""
    if value is None:
        return set()
    return {value} if isinstance(value, (int, str)) else set(value)


def write_folder(tensors: dict[str, Any], doc: dict[str, Any], dest: str | os.PathLike[str],
                  rel: str, storage_options: Mapping[str, Any] | None) -> None:
    """Write ``weights.safetensors`` and then ``model.json`` (with its SHA-256), atomically.

    Holds the destination's writer lock (:func:`nest_data._locks.writer_lock`) meanwhile;
    a full disk is a :class:`~nest_data.errors.NoSpaceError`.
    """
    from safetensors.torch import save_file

    needs = sum(int(t.numel()) * int(t.element_size()) for t in tensors.values())
    with writer_lock(dest, "convert weights"), no_space(dest, needs), \
            staging(dest, rel) as stage:
        stage.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(stage / WEIGHTS_FILE), metadata={"format": doc["format"]})
        doc["weights_sha256"] = file_digest(stage / WEIGHTS_FILE)
        (stage / MODEL_FILE).write_text(json.dumps(doc, indent=2))
        commit(stage, dest, rel, storage_options, last=MODEL_FILE)


def provenance() -> dict[str, str]:
    from nest_data import __version__

    return {"converter": f"nest-data {__version__} (nest_data.converters.weights)",
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}


def source_doc(path: Path) -> dict[str, Any]:
    return {"file": path.name, "bytes": path.stat().st_size, "sha256": file_digest(path)}


def checked_array(block: Mapping[str, Any], name: str, path: Path, ndim: int) -> np.ndarray:
    if not isinstance(block, Mapping) or name not in block:
        found = sorted(block) if isinstance(block, Mapping) else type(block).__name__
        raise SourceFormatError(f"{path}: expected a field {name!r}, found {found}")
    values = np.asarray(block[name])
    if values.ndim != ndim or values.dtype.kind not in "fiu":
        raise SourceFormatError(f"{path}: {name} is {values.dtype} with shape {values.shape}; "
                                f"expected a {ndim}-D numeric array")
    return values


def scaler_pca(scaler_doc: Mapping[str, Any], scaler_path: Path, pca_doc: Mapping[str, Any],
                pca_path: Path, n_components: int, reg_path: Path) -> dict[str, np.ndarray]:
    """``scaler.mean_``, ``scaler.scale_``, ``pca.components_`` (the first ``n_components``,
    which the regressions use) and ``pca.mean_`` of a ViT-B/32 encoder, shapes checked."""
    components = checked_array(pca_doc, "components_", pca_path, 2)
    if components.shape[0] < n_components:
        raise SourceFormatError(f"{pca_path}: {components.shape[0]} PCA components, but the "
                                f"regressions of {reg_path.name} use {n_components}")
    head = {"scaler.mean_": checked_array(scaler_doc, "mean_", scaler_path, 1),
            "scaler.scale_": checked_array(scaler_doc, "scale_", scaler_path, 1),
            "pca.components_": components[:n_components],  # NED kept 1,000 and used 250
            "pca.mean_": checked_array(pca_doc, "mean_", pca_path, 1)}
    n_features = components.shape[1]
    for name in ("scaler.mean_", "scaler.scale_", "pca.mean_"):
        if head[name].shape != (n_features,):
            where = scaler_path if name.startswith("scaler") else pca_path
            raise SourceFormatError(f"{where}: {name} has shape {head[name].shape}; the PCA "
                                    f"components have {n_features} features")
    return head
