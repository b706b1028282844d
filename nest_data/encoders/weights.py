"""Loading converted encoder weights (safetensors + JSON): never a pickle."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import fsspec
import numpy as np
from safetensors.torch import load as load_safetensors

from nest_data._catalog import Catalog
from nest_data._catalog import catalog as default_catalog
from nest_data._digest import bytes_digest
from nest_data._storage import is_local, join, local_path, validate_storage_options
from nest_data.encoders.fwrf import FwrfModel
from nest_data.errors import ChecksumError, StoreNotFoundError

logger = logging.getLogger("nest_data")

WEIGHTS_FILE = "weights.safetensors"
MODEL_FILE = "model.json"

__all__ = ["load_fwrf", "load_fwrf_folder"]


def _read(url: str, options: Mapping[str, Any]) -> bytes:
    if is_local(url):
        with open(local_path(url), "rb") as f:
            return f.read()
    validate_storage_options(url, options)
    with fsspec.open(url, "rb", **options) as f:
        return bytes(f.read())


def load_fwrf_folder(url: str, storage_options: Mapping[str, Any] | None = None
                     ) -> tuple[FwrfModel, dict[str, Any], dict[str, np.ndarray]]:
    """Load one converted fwRF weights folder.

    Returns the model (eval mode), its ``model.json`` and the voxel labels (``voxel``,
    ``i, j, k``, ``x, y, z``, ``ncsnr``, accuracies) when the converter had NEST's metadata.

    The weights file is checked against the SHA-256 recorded in ``model.json``.

    Raises
    ------
    StoreNotFoundError
        No ``model.json`` at ``url`` (the weights were not converted, or not completely).
    ChecksumError
        The weights file differs from the one the converter wrote.
    """
    options = dict(storage_options or {})
    try:
        doc = json.loads(_read(join(url, MODEL_FILE), options))
    except FileNotFoundError as exc:
        raise StoreNotFoundError(
            f"no converted weights at {url} ({MODEL_FILE} is missing). Convert NEST's weights "
            "with `nest-data convert weights SRC DEST --trust-pickles`, then point location= "
            "at DEST") from exc
    data = _read(join(url, WEIGHTS_FILE), options)
    digest = bytes_digest(data)
    if digest != doc.get("weights_sha256"):
        raise ChecksumError(f"{join(url, WEIGHTS_FILE)} has checksum {digest}, recorded "
                            f"{doc.get('weights_sha256')}; re-convert the weights")
    tensors = load_safetensors(data)
    parts = []
    for part in range(1, len(doc["parts"]) + 1):
        enc = {k.split(".", 2)[2]: v for k, v in tensors.items()
               if k.startswith(f"part{part}.enc.")}
        fwrf = {k.split(".", 2)[2]: v for k, v in tensors.items()
                if k.startswith(f"part{part}.fwrf.")}
        parts.append((enc, fwrf))
    voxels = {k.split(".", 1)[1]: v.numpy() for k, v in tensors.items()
              if k.startswith("voxel.")}
    return FwrfModel.from_state_dicts(parts), doc, voxels


def load_fwrf(
    *,
    subject: int | str,
    roi: str,
    location: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    catalog: Catalog | None = None,
) -> FwrfModel:
    """The fwRF encoder of one subject and ROI, from converted weights found via the catalog.

    Parameters
    ----------
    subject : int or str
        Subject 1-8.
    roi : str
        ROI name; ``lateral`` and ``ventral`` load both halves.
    location : str, optional
        Location (name or URL) whose root holds the ``weights/`` folders; default lookup as
        in :func:`nest_data.open`.
    storage_options : dict, optional
        fsspec options, merged over the location's own.

    Returns
    -------
    FwrfModel
        In eval mode; ``model(preprocess(images))`` gives ``(B, n_voxels)`` responses.
    """
    cat = catalog or default_catalog()
    _, rel = cat.resolve_weights(modality="fmri", subject=subject, roi=roi)
    root, options, _ = cat.location(location)
    model, doc, _ = load_fwrf_folder(join(root, rel), {**options, **(storage_options or {})})
    logger.debug("loaded fwRF weights sub-%02d %s (%d voxels)", doc["subject"], doc["roi"],
                 doc["n_voxels"])
    return model

