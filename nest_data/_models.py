"""Loaded encoders: where the converted weights are, loading them once per process."""

from __future__ import annotations

import logging
import os
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from nest_data._catalog import Catalog
from nest_data._catalog import catalog as default_catalog
from nest_data._digest import bytes_digest
from nest_data.errors import InputError

logger = logging.getLogger("nest_data")

__all__ = ["ENV_BACKBONE", "EncoderSource", "LoadedEncoder", "clear_loaded", "load_encoder",
           "release", "torch_device"]

#: Environment variable naming the converted ViT-B/32 backbone (folder or .safetensors).
ENV_BACKBONE = "NEST_DATA_VIT_B_32"


def torch_device(device: str) -> Any:
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"unknown device {device!r}; use 'auto', 'cpu' or 'cuda'") from exc
    if target.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device={device!r}, but torch sees no CUDA device here; use "
                         "device='auto' (CUDA when present, else the CPU) or device='cpu'")
    return target


@dataclass
class LoadedEncoder:
    """A loaded NEST encoder with everything needed to label its output.

    Built by :func:`load_encoder`; :func:`encode` and ``nest-data generate`` call it on uint8
    images, :func:`nest_data.dream` and :func:`nest_data.saliency` differentiate through
    :meth:`float_responses`.  The model's own parameters never need gradients (they are
    off), so gradients flow to the images only.
    """

    model: Any  # torch.nn.Module, in eval mode
    preprocess: Callable[[Any], Any]  # uint8 (B, 3, S, S) -> the model's input
    preprocess_float: Callable[[Any], Any]  # the same for float images in [0, 1]
    dims: tuple[str, ...]  # dims of the output, "image" first
    row_shape: tuple[int, ...]
    coords: dict[str, tuple[tuple[str, ...], np.ndarray]]
    attrs: dict[str, Any]
    digest: str  # SHA-256 of everything the output depends on (cache key)
    keys: dict[str, Any] = field(default_factory=dict)
    rois: dict[str, np.ndarray] = field(default_factory=dict)  # surface: ROI -> vertices
    order: np.ndarray | None = None  # surface: vertex order in stores (see nest_data._surface)

    def to(self, device: Any) -> LoadedEncoder:
        """Move the model to a torch device (in place); return self."""
        self.model = self.model.to(device)
        return self

    def __call__(self, images: Sequence[np.ndarray], device: Any) -> np.ndarray:
        """Responses ``(B, *row_shape)`` float32 of square uint8 ``(3, S, S)`` images."""
        import torch

        with torch.inference_mode():
            batch = torch.cat([self.preprocess(torch.from_numpy(a)[None].to(device))
                               for a in images])
            return np.asarray(self.model(batch).float().cpu().numpy(), dtype=np.float32)

    def labelled(self, values: np.ndarray, image_ids: Sequence[str]) -> xr.DataArray:
        """Responses ``(B, *row_shape)`` as a stored entry's labelled ``responses``."""
        coords: dict[str, Any] = {"image": ("image", np.asarray(image_ids, dtype=object))}
        coords.update(self.coords)
        return xr.DataArray(values, dims=self.dims, coords=coords, attrs=dict(self.attrs),
                            name="responses")

    def float_responses(self, images: Any) -> Any:
        """Responses ``(B, *row_shape)`` of float images ``(B, 3, S, S)`` in [0, 1], as a
        tensor with gradients to the images.

        The arithmetic of :meth:`__call__` on the images' uint8 values, less the rounding of
        the resized image to uint8.
        """
        return self.model(self.preprocess_float(images))


@dataclass(frozen=True)
class EncoderSource:
    """Where one encoder's converted weights are: resolved once, loadable in any process.

    Built by :meth:`resolve` from catalog keys; :meth:`load` reads the weights (and is
    cached per process, so dask tasks on one worker share one loaded model).
    """

    modality: str
    train_dataset: str
    model: str
    units: str
    weights_url: str
    backbone_url: str = ""
    #: fsspec options of the weights' location: may hold credentials (objects too), so never
    #: shown, and not part of the source's identity (the same weights, whoever reads them).
    storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False,
                                               compare=False)
    surface: bool = False
    #: The weights' path relative to the location (the same for every ROI of a surface model).
    path: str = ""

    @classmethod
    def resolve(
        cls, *, subject: int | str, roi: str | None = None, modality: str | None = "fmri",
        train_dataset: str | None = None, model: str | None = None,
        location: str | None = None, storage_options: Mapping[str, Any] | None = None,
        backbone: str | os.PathLike[str] | None = None, catalog: Catalog | None = None,
    ) -> EncoderSource:
        """Find the weights of one subject's (and ROI's) encoder through the catalog."""
        cat = catalog or default_catalog()
        spec, rel = cat.resolve_weights(modality=modality, train_dataset=train_dataset,
                                        model=model, subject=subject, roi=roi)
        root = cat.location(location, storage_options)
        if root.name == "demo":  # say which encoders the demo has, not how to convert
            from nest_data._demo import check_demo_weights

            check_demo_weights(cat, spec.name, rel)
        backbone_url = ""
        if spec.backbone_path:
            backbone_url = os.fspath(backbone) if backbone is not None else (
                os.environ.get(ENV_BACKBONE) or root.join(spec.backbone_path))
        return cls(spec.modality, spec.train_dataset, spec.model, spec.units, root.join(rel),
                   backbone_url, dict(root.storage_options), spec.surface, rel)

    def load(self) -> LoadedEncoder:
        """The encoder, loaded once per process and version of the weights.

        Each call reads the small ``model.json`` of the weights (and of the backbone) to
        learn their SHA-256, so weights converted again are loaded again; the model itself
        is shared with the process's cache (``LoadedEncoder.to`` moves it).
        """
        from nest_data.encoders.weights import recorded_digest

        options = self.storage_options
        digests = (recorded_digest(self.weights_url, options),
                   recorded_digest(self.backbone_url, options) if self.backbone_url else "")
        return _load_cached(self, digests)


#: Loaded models a process keeps for later calls (the two used last).
KEPT = 2
_Key = tuple[EncoderSource, tuple[str, str]]
_kept: OrderedDict[_Key, LoadedEncoder] = OrderedDict()
#: Every loaded model still in use (kept above, or held by an :class:`nest_data.Encoder`),
#: so a model in use is never loaded twice.
_live: weakref.WeakValueDictionary[_Key, LoadedEncoder] = weakref.WeakValueDictionary()


def _load_cached(source: EncoderSource, digests: tuple[str, str]) -> LoadedEncoder:
    key = (source, digests)
    loaded = _live.get(key)
    if loaded is None:
        loaded = _load(source)
        _live[key] = loaded
    _kept[key] = loaded
    _kept.move_to_end(key)
    while len(_kept) > KEPT:
        _kept.popitem(last=False)
    return loaded


def release(loaded: LoadedEncoder) -> None:
    """Stop keeping ``loaded`` for later calls: its memory goes once nothing else holds it."""
    for key in [key for key, value in _kept.items() if value is loaded]:
        del _kept[key]


def clear_loaded() -> None:
    """Forget every loaded model, as a new process would (the next call reads the files)."""
    _kept.clear()
    _live.clear()


def _load(source: EncoderSource) -> LoadedEncoder:
    options = source.storage_options
    keys = {"modality": source.modality, "train_dataset": source.train_dataset,
            "model": source.model}
    attrs: dict[str, Any] = {**keys, "units": source.units}
    if source.surface:
        return _load_surface(source, options, keys, attrs)
    if source.modality == "fmri":
        from nest_data.encoders.fwrf import preprocess, preprocess_float
        from nest_data.encoders.weights import load_fwrf_folder

        model, doc, voxels = load_fwrf_folder(source.weights_url, options)
        keys.update({"subject": doc["subject"], "roi": doc["roi"]})
        attrs.update({"subject": doc["subject"], "roi": doc["roi"],
                      **doc.get("voxel_attrs", {}),
                      "source": "computed by nest-data's fwRF encoder (plain torch) from "
                                "converted NEST weights",
                      "weights_sha256": doc["weights_sha256"]})
        return LoadedEncoder(_frozen(model), preprocess, preprocess_float, ("image", "voxel"),
                             (model.n_voxels,),
                             {name: (("voxel",), values) for name, values in voxels.items()},
                             attrs, doc["weights_sha256"], keys)
    from nest_data.encoders.vit import VitModel, preprocess_imagenet, preprocess_imagenet_float
    from nest_data.encoders.weights import load_backbone, load_eeg_folder

    head, doc, maps = load_eeg_folder(source.weights_url, options)
    vit, vit_digest = load_backbone(source.backbone_url, options)
    n_rep, n_ch, n_t = doc["shape"]
    coords: dict[str, tuple[tuple[str, ...], np.ndarray]] = {
        "repetition": (("repetition",), np.arange(1, n_rep + 1, dtype=np.int64)),
        "channel": (("channel",), np.asarray(doc["channels"], dtype=object)),
        "time": (("time",), np.asarray(doc["times"], dtype=np.float64))}
    coords.update({name: (tuple(doc["coords"][name]), values) for name, values in maps.items()})
    digest = bytes_digest(f"{doc['weights_sha256']}+{vit_digest}".encode())
    keys["subject"] = doc["subject"]
    attrs.update({"subject": doc["subject"],
                  "source": "computed by nest-data's ViT-B/32 EEG encoder (plain torch) from "
                            "converted NEST weights",
                  "weights_sha256": doc["weights_sha256"], "backbone_sha256": vit_digest})
    return LoadedEncoder(_frozen(VitModel(vit, head)), preprocess_imagenet,
                         preprocess_imagenet_float, ("image", "repetition", "channel", "time"),
                         (n_rep, n_ch, n_t), coords, attrs, digest, keys)


def _load_surface(source: EncoderSource, options: Mapping[str, Any], keys: dict[str, Any],
                  attrs: dict[str, Any]) -> LoadedEncoder:
    """BERG's fsaverage encoder: ViT-B/32 features, scaler, PCA, both hemispheres."""
    from nest_data._surface import store_order, surface_labels
    from nest_data.encoders.vit import VitModel, preprocess_imagenet, preprocess_imagenet_float
    from nest_data.encoders.weights import load_backbone, load_surface_folder

    head, doc, labels = load_surface_folder(source.weights_url, options)
    vit, vit_digest = load_backbone(source.backbone_url, options)
    n_lh, n_rh = int(doc["n_vertices"]["lh"]), int(doc["n_vertices"]["rh"])
    coords: dict[str, tuple[tuple[str, ...], np.ndarray]] = {
        name: (("vertex",), values) for name, values in surface_labels(n_lh, n_rh).items()}
    coords.update({name.split(".", 1)[1]: (("vertex",), values)
                   for name, values in labels.items() if name.startswith("vertex.")})
    keys["subject"] = doc["subject"]
    attrs.update({"subject": doc["subject"], "space": "fsaverage surface (163,842 vertices "
                  "per hemisphere); vertex = global index, left hemisphere first",
                  "n_vertices": doc["n_vertices"],
                  "source": "computed by nest-data's ViT-B/32 fsaverage encoder (plain torch) "
                            "from converted BERG weights",
                  "weights_sha256": doc["weights_sha256"], "backbone_sha256": vit_digest})
    rois = {name.split(".", 1)[1]: values for name, values in labels.items()
            if name.startswith("roi.")}
    digest = bytes_digest(f"{doc['weights_sha256']}+{vit_digest}".encode())
    return LoadedEncoder(_frozen(VitModel(vit, head)), preprocess_imagenet,
                         preprocess_imagenet_float, ("image", "vertex"), (n_lh + n_rh,), coords,
                         attrs, digest, keys, rois, store_order(rois, n_lh + n_rh))


def _frozen(model: Any) -> Any:
    """The model in eval mode, its parameters without gradients (they are never trained)."""
    return model.eval().requires_grad_(False)


def load_encoder(
    *,
    subject: int | str,
    roi: str | None = None,
    modality: str | None = "fmri",
    train_dataset: str | None = None,
    model: str | None = None,
    location: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    backbone: str | os.PathLike[str] | None = None,
    catalog: Catalog | None = None,
) -> LoadedEncoder:
    """Load one subject's (and ROI's) NEST encoder from converted weights (no pickle).

    Parameters are those of :func:`encode`.  Loaded weights are kept per process (two
    encoders at most), so asking again reads nothing; the weights' checksums are checked
    when they are read.

    Returns
    -------
    LoadedEncoder
        The model in eval mode, its preprocessing and its output's labels.

    Examples
    --------
    >>> load_encoder(subject=1, roi="V1", location="/nowhere")
    Traceback (most recent call last):
    ...
    nest_data.errors.StoreNotFoundError: no converted weights at /nowhere/weights/...
    """
    return EncoderSource.resolve(subject=subject, roi=roi, modality=modality,
                                 train_dataset=train_dataset, model=model, location=location,
                                 storage_options=storage_options, backbone=backbone,
                                 catalog=catalog).load()
