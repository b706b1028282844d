"""Loading converted encoder weights (safetensors + JSON): never a pickle."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from zarr.core.sync import sync

from nest_data._digest import bytes_digest
from nest_data._redact import redact_url
from nest_data._storage import make_store
from nest_data._urls import is_local, join, local_path
from nest_data.encoders.fwrf import FwrfModel
from nest_data.encoders.vit import EegHead, SurfaceHead, VitB32
from nest_data.errors import ChecksumError, InputError, StoreNotFoundError

logger = logging.getLogger("nest_data")

WEIGHTS_FILE = "weights.safetensors"
MODEL_FILE = "model.json"

__all__ = ["load_backbone", "load_eeg_folder", "load_fwrf_folder",
           "load_surface_folder", "recorded_digest"]


def _read(url: str, options: Mapping[str, Any]) -> bytes:
    """One whole file; ``FileNotFoundError`` only when it is absent.

    A remote file is read through the store's read path (:func:`nest_data._storage.make_store`),
    with its timeouts and retries: a host that cannot be reached is a
    :class:`~nest_data.errors.RemoteReadError` naming the URL, never a missing file.
    """
    if is_local(url):
        with open(local_path(url), "rb") as f:
            return f.read()
    folder, _, name = url.rpartition("/")
    (data,) = sync(make_store(folder, options).get_objects([name]))
    if data is None:
        raise FileNotFoundError(redact_url(url))
    return data


def _read_doc(url: str, options: Mapping[str, Any]) -> dict[str, Any]:
    try:
        return dict(json.loads(_read(join(url, MODEL_FILE), options)))
    except FileNotFoundError as exc:
        raise StoreNotFoundError(
            f"no converted weights at {url} ({MODEL_FILE} is missing). Convert NEST's weights "
            "with `nest-data convert weights SRC DEST` (add --trust-pickles for fMRI, "
            "--vit-b-32 FILE for the EEG backbone), then point location= at DEST") from exc


def recorded_digest(url: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """The SHA-256 that a converted weights folder's ``model.json`` records (one small read).

    For a bare ``.safetensors`` file (a backbone given by path), the URL itself.
    """
    if url.endswith((".safetensors", ".pth", ".pt")):
        return url
    return str(_read_doc(url, dict(storage_options or {})).get("weights_sha256"))


def _read_folder(url: str, storage_options: Mapping[str, Any] | None
                 ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``model.json`` and the tensors of a converted weights folder, checksum checked."""
    options = dict(storage_options or {})
    doc = _read_doc(url, options)
    data = _read(join(url, WEIGHTS_FILE), options)
    digest = bytes_digest(data)
    if digest != doc.get("weights_sha256"):
        raise ChecksumError(f"{join(url, WEIGHTS_FILE)} has checksum {digest}, recorded "
                            f"{doc.get('weights_sha256')}; re-convert the weights")
    return doc, load_safetensors(data)


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
    doc, tensors = _read_folder(url, storage_options)
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



def load_eeg_folder(url: str, storage_options: Mapping[str, Any] | None = None
                    ) -> tuple[EegHead, dict[str, Any], dict[str, np.ndarray]]:
    """Load one subject's converted EEG head (scaler, PCA, regressions).

    Returns the head, its ``model.json`` (channel names, times) and the accuracy maps
    (name -> array over ``(channel, time)`` or ``(repetition, channel, time)``; their dims
    are ``model.json["coords"]``).

    Raises
    ------
    StoreNotFoundError, ChecksumError
        As :func:`load_fwrf_folder`.

    Examples
    --------
    >>> import tempfile
    >>> from nest_data.converters.weights import convert_eeg_weights
    >>> from nest_data.synthetic import write_eeg_weights
    >>> src, dest = tempfile.mkdtemp(), tempfile.mkdtemp()
    >>> _ = write_eeg_weights(src, 2, n_components=3)
    >>> (rel,) = convert_eeg_weights(src, dest)
    >>> head, doc, maps = load_eeg_folder(f"{dest}/{rel}")
    >>> head(torch.zeros(1, 460800)).shape, doc["channels"][:3]
    (torch.Size([1, 4, 63, 140]), ['Fp1', 'F3', 'F7'])
    >>> sorted(maps)
    ['correlation_averaged_repetitions', 'correlation_single_repetitions']
    """
    doc, tensors = _read_folder(url, storage_options)
    _, n_ch, n_t = doc["shape"]
    head = EegHead(tensors["scaler.mean_"], tensors["scaler.scale_"], tensors["pca.components_"],
                   tensors["pca.mean_"], tensors["reg.coef_"], tensors["reg.intercept_"],
                   channels=n_ch, times=n_t)
    coords = {k.split(".", 1)[1]: v.numpy() for k, v in tensors.items()
              if k.startswith("coord.")}
    return head.eval(), doc, coords


def load_surface_folder(url: str, storage_options: Mapping[str, Any] | None = None
                        ) -> tuple[SurfaceHead, dict[str, Any], dict[str, np.ndarray]]:
    """Load one subject's converted fsaverage head (scaler, PCA, both hemispheres' regressions).

    Returns the head (vertices of both hemispheres, left first), its ``model.json``
    (``n_vertices`` per hemisphere, ``rois``) and the labels: ``vertex.<name>`` per-vertex
    values, ``roi.<name>`` global vertex indices of each ROI, ``split.<name>`` image splits.

    Raises
    ------
    StoreNotFoundError, ChecksumError
        As :func:`load_fwrf_folder`.

    Examples
    --------
    >>> import tempfile
    >>> from nest_data.converters.weights import convert_fsaverage_weights
    >>> from nest_data.synthetic import write_fsaverage_weights
    >>> src, dest = tempfile.mkdtemp(), tempfile.mkdtemp()
    >>> _ = write_fsaverage_weights(src, 1, n_components=2, n_vertices=642)
    >>> (rel,) = convert_fsaverage_weights(src, dest)
    >>> head, doc, labels = load_surface_folder(f"{dest}/{rel}")
    >>> head(torch.zeros(1, 460800)).shape, doc["n_vertices"], labels["roi.FFA-1"].shape
    (torch.Size([1, 1284]), {'lh': 642, 'rh': 642}, (10,))
    """
    doc, tensors = _read_folder(url, storage_options)
    head = SurfaceHead(tensors["scaler.mean_"], tensors["scaler.scale_"],
                       tensors["pca.components_"], tensors["pca.mean_"],
                       torch.cat([tensors["lh.coef_"], tensors["rh.coef_"]]),
                       torch.cat([tensors["lh.intercept_"], tensors["rh.intercept_"]]))
    labels = {k: v.numpy() for k, v in tensors.items()
              if k.startswith(("vertex.", "roi.", "split."))}
    return head.eval(), doc, labels


def load_backbone(url: str, storage_options: Mapping[str, Any] | None = None
                  ) -> tuple[VitB32, str]:
    """Load the ViT-B/32 backbone: a converted folder or a ``.safetensors`` state_dict file.

    Returns the model (eval mode) and the SHA-256 of its weights file.

    Raises
    ------
    InputError
        ``url`` is a torch pickle (``.pth``/``.pt``), which nest-data never loads outside
        the converter, or its tensors are not torchvision's ``vit_b_32`` layout.
    StoreNotFoundError, ChecksumError
        As :func:`load_fwrf_folder`.

    Examples
    --------
    >>> load_backbone("vit_b_32-d86f8d99.pth")
    Traceback (most recent call last):
    ...
    nest_data.errors.InputError: vit_b_32-d86f8d99.pth is a torch pickle; ...
    """
    convert = ("convert it once with `nest-data convert weights --vit-b-32 FILE DEST` and "
               "give the folder it writes (or DEST as location=)")
    if url.endswith((".pth", ".pt")):
        raise InputError(f"{url} is a torch pickle; nest-data only loads safetensors when "
                         f"encoding: {convert}")
    if url.endswith(".safetensors"):
        try:
            data = _read(url, dict(storage_options or {}))
        except FileNotFoundError as exc:
            raise StoreNotFoundError(f"no ViT-B/32 weights file at {url}; {convert}") from exc
        tensors, digest = load_safetensors(data), bytes_digest(data)
    else:
        doc, tensors = _read_folder(url, storage_options)
        digest = doc["weights_sha256"]
    try:
        return VitB32.from_state_dict(tensors), digest
    except ValueError as exc:
        raise InputError(f"{url}: {exc}; give torchvision's vit_b_32 weights") from exc
