"""Responses to new images, computed on the fly by the NEST encoders (needs torch)."""

from __future__ import annotations

import gc
import logging
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from nest_data import _config
from nest_data._catalog import Catalog
from nest_data._catalog import catalog as default_catalog
from nest_data._images import as_images, content_hash, image_labels
from nest_data._models import EncoderSource, LoadedEncoder, release, torch_device
from nest_data._redact import redact_url
from nest_data.analysis.means import counted
from nest_data.errors import EncoderFreedError, InputError

logger = logging.getLogger("nest_data")

__all__ = ["Encoder", "ResponseCache", "check_alone", "encode", "encoder",
           "selection_indices"]


class ResponseCache:
    """Computed responses on local disk, keyed by the weights' and the image's SHA-256.

    One ``.npy`` file per (encoder weights, image) under
    ``<cache dir>/responses/<weights sha256>/``; written atomically (temp file + rename), so
    concurrent processes never see a partial file.  Keys include the weights' checksum, so
    re-converted weights never reuse stale responses.
    """

    def __init__(self, weights_sha256: str, root: Path | None = None) -> None:
        base = root if root is not None else _config.cache_dir() / "responses"
        self.folder = base / weights_sha256.removeprefix("sha256:")[:32]

    def get(self, image_hash: str) -> np.ndarray | None:
        """The cached responses of one image, or None."""
        try:
            return np.load(self.folder / f"{image_hash}.npy")
        except (FileNotFoundError, ValueError, EOFError):
            return None

    def put(self, image_hash: str, values: np.ndarray) -> None:
        """Store the responses of one image."""
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".tmp-{uuid.uuid4().hex}.npy"
        np.save(tmp, values)
        os.replace(tmp, self.folder / f"{image_hash}.npy")


def _eeg_selection(encoder: LoadedEncoder, channels: Sequence[str] | None, timepoints: Any
                   ) -> dict[str, np.ndarray]:
    """Indices for BERG's ``selection`` (channel names, a 140-long one-hot time mask)."""
    if "channel" not in encoder.dims:
        if channels is not None or timepoints is not None:
            raise InputError("channels= and timepoints= select EEG outputs; for fMRI, "
                             "choose the voxels with roi=")
        return {}
    out: dict[str, np.ndarray] = {}
    names = list(encoder.coords["channel"][1])
    if channels is not None:
        wanted = [channels] if isinstance(channels, str) else list(channels)
        unknown = [c for c in wanted if c not in names]
        if unknown or not wanted:
            raise InputError(f"unknown channel(s) {unknown or wanted}; valid: "
                             + ", ".join(map(str, names)))
        out["channel"] = np.asarray([names.index(c) for c in wanted])
    if timepoints is not None:
        out["time"] = selection_indices(timepoints, encoder.row_shape[-1], "timepoints=")
    return out


def _surface_selection(encoder: LoadedEncoder, roi: str | None, lh_vertices: Any, rh_vertices: Any
                       ) -> dict[str, np.ndarray]:
    """Global vertex indices for ``roi=`` or BERG's ``lh_vertices``/``rh_vertices``."""
    if "vertex" not in encoder.dims:
        return {}
    if roi is not None:
        if lh_vertices is not None or rh_vertices is not None:
            raise InputError("give roi= or lh_vertices=/rh_vertices=, not both (BERG uses the "
                             "vertex vectors only when no ROI is given)")
        if roi not in encoder.rois:
            raise InputError(f"ROI {roi!r} has no vertex selection in these weights (their "
                             "metadata file was missing when they were converted); ROIs "
                             f"available: {', '.join(encoder.rois) or 'none'}")
        return {"vertex": np.sort(encoder.rois[roi])}
    if lh_vertices is None and rh_vertices is None:
        return {}
    n_lh = int(encoder.attrs["n_vertices"]["lh"])
    n_rh = int(encoder.attrs["n_vertices"]["rh"])
    parts = []
    for name, value, n, offset in (("lh_vertices", lh_vertices, n_lh, 0),
                                   ("rh_vertices", rh_vertices, n_rh, n_lh)):
        if value is None:  # BERG: a hemisphere without a vector keeps all its vertices
            parts.append(np.arange(n) + offset)
            continue
        parts.append(selection_indices(value, n, f"{name}=") + offset)
    return {"vertex": np.concatenate(parts)}


def selection_indices(value: Any, n: int, what: str) -> np.ndarray:
    """Sorted indices from BERG's one-hot vector (length ``n``) or from integer indices.

    Used for ``timepoints=``, ``lh_vertices=``/``rh_vertices=`` and BERG's ROI vertex
    selections; ``what`` names the value in messages (``"timepoints="``).

    Raises
    ------
    InputError
        An empty or wrong-length vector, indices outside ``0..n-1``, or non-integers.

    Examples
    --------
    >>> selection_indices([0, 1, 1, 0], 4, "x=").tolist()  # BERG's one-hot vector
    [1, 2]
    >>> selection_indices([3, 1], 4, "x=").tolist()
    [1, 3]
    """
    values = np.asarray(value)
    if values.dtype == bool or (values.shape == (n,) and values.dtype.kind in "iu"
                                and set(np.unique(values).tolist()) <= {0, 1}):
        if values.shape != (n,) or not values.any():
            raise InputError(f"{what} as a one-hot vector needs {n} values with at least one "
                             f"1 (BERG's selection); got shape {values.shape}")
        return np.flatnonzero(values)
    if values.dtype.kind not in "iu" or values.ndim > 1:
        raise InputError(f"{what} is {values.dtype} with shape {values.shape}; give integer "
                         f"indices in 0..{n - 1} or a one-hot vector of {n} values")
    index = values.astype(np.int64).ravel()
    if index.size == 0 or index.min() < 0 or index.max() >= n:
        raise InputError(f"{what} indices must lie in 0..{n - 1}; got {index.size} values "
                         f"from {index.min(initial=0)} to {index.max(initial=0)}")
    return np.unique(index)


def encoder(
    *,
    subject: int | str,
    roi: str | None = None,
    modality: str = "fmri",
    train_dataset: str | None = None,
    model: str | None = None,
    channels: Sequence[str] | None = None,
    timepoints: Any = None,
    lh_vertices: Any = None,
    rh_vertices: Any = None,
    location: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    backbone: str | os.PathLike[str] | None = None,
    device: str = "auto",
    catalog: Catalog | None = None,
) -> Encoder:
    """Load one NEST encoder once, to encode many batches, describe it and free it.

    BERG's ``get_encoding_model``: the weights are read (and checked) here, once; the
    :class:`Encoder` then answers :meth:`Encoder.encode` for any number of batches and is
    accepted by :func:`nest_data.encode`, :func:`nest_data.generate`, :func:`nest_data.dream`
    and :func:`nest_data.saliency` (``encoder=``).

    Parameters
    ----------
    subject, roi, modality, train_dataset, model
        The encoder, as in :func:`nest_data.encode`.
    channels, timepoints, lh_vertices, rh_vertices
        The selection its outputs keep (BERG's ``selection=``), as in
        :func:`nest_data.encode`; ``roi=`` selects the vertices of the fsaverage model.
    location, storage_options, backbone
        Where the converted weights are, as in :func:`nest_data.encode`.
    device : str
        ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``; :meth:`Encoder.to` moves it.
    catalog : Catalog, optional
        The catalog that resolves the keys (default: the built-in one).

    Returns
    -------
    Encoder
        The loaded encoder; use it as a context manager (or call :meth:`Encoder.free`) to
        release its memory.

    Raises
    ------
    InputError
        A bad selection or device.
    UnknownKeyError
        Keys the catalog does not know (with the valid ones).
    StoreNotFoundError
        No converted weights where the catalog says (the message says how to convert them).

    Examples
    --------
    >>> import nest_data
    >>> from nest_data.synthetic import test_images
    >>> with nest_data.encoder(subject=1, roi="FFA-1", location="demo", device="cpu") as ffa:
    ...     first = ffa.encode(test_images(2, 64), show_progress=False)
    ...     second = ffa.encode(test_images(3, 64), show_progress=False)
    >>> first.dims, second.sizes["image"]
    (('image', 'voxel'), 3)
    """
    source = EncoderSource.resolve(subject=subject, roi=roi, modality=modality,
                                   train_dataset=train_dataset, model=model, location=location,
                                   storage_options=storage_options, backbone=backbone,
                                   catalog=catalog)
    return Encoder(source, roi=roi, channels=channels, timepoints=timepoints,
                   lh_vertices=lh_vertices, rh_vertices=rh_vertices, device=device,
                   catalog=catalog)


class Encoder:
    """A loaded NEST encoder with its selection: encodes batches, describes itself, frees.

    Made by :func:`nest_data.encoder`.  The model is loaded once and shared with the
    process's other calls for the same weights (:func:`nest_data.encode` with the same keys
    reads nothing again); :meth:`free`, or the end of a ``with`` block, lets its memory go.

    Examples
    --------
    >>> import nest_data
    >>> v1 = nest_data.encoder(subject=1, roi="V1", location="demo", device="cpu")
    >>> v1
    <nest_data.Encoder fmri/nsd/fwrf sub-01 V1: (image, voxel) 1350 voxels on cpu>
    >>> v1.free()
    """

    def __init__(self, source: EncoderSource, *, roi: str | None = None,
                 channels: Sequence[str] | None = None, timepoints: Any = None,
                 lh_vertices: Any = None, rh_vertices: Any = None, device: str = "auto",
                 catalog: Catalog | None = None) -> None:
        if not source.surface and (lh_vertices is not None or rh_vertices is not None):
            raise InputError("lh_vertices= and rh_vertices= select fsaverage vertices; pass "
                             "train_dataset='nsd_fsaverage' to use the surface encoder")
        self.source = source
        self._device = torch_device(device)
        loaded = source.load()
        self._selection = {**_eeg_selection(loaded, channels, timepoints),
                           **_surface_selection(loaded, roi, lh_vertices, rh_vertices)}
        self._keys = dict(loaded.keys)
        self._roi = loaded.keys.get("roi", roi)  # the catalog's spelling of an fwRF ROI
        self._roi_label = self._roi if self._roi is not None or "vertex" not in loaded.dims else (
            "selected vertices" if self._selection else "whole surface")
        spec = (catalog or default_catalog()).resolve_weights(
            modality=source.modality, train_dataset=source.train_dataset, model=source.model,
            subject=loaded.keys["subject"],
            roi=loaded.keys.get("roi") if not source.surface else None)[0]
        self._description = spec.description
        self._loaded: LoadedEncoder | None = loaded.to(self._device)

    # -------------------------------------------------------------------- what it is

    @property
    def loaded(self) -> LoadedEncoder:
        """The loaded model, its preprocessing and labels (raises once freed)."""
        if self._loaded is None:
            raise EncoderFreedError(
                f"this encoder ({self._name}) was freed (free() was called or its with-block "
                "ended); load it again with nest_data.encoder(...)")
        return self._loaded

    @property
    def _name(self) -> str:
        keys = self.keys
        roi = f" {self._roi_label}" if self._roi_label else ""
        return (f"{keys['modality']}/{keys['train_dataset']}/{keys['model']} "
                f"sub-{int(keys['subject']):02d}{roi}")

    @property
    def keys(self) -> dict[str, Any]:
        """The catalog keys of the encoder (``modality``, ``train_dataset``, ``model``,
        ``subject`` and, for the fwRF model, ``roi``)."""
        return dict(self._keys)

    @property
    def roi(self) -> str | None:
        """The ROI the outputs cover, or None (EEG, the whole surface, vertex vectors)."""
        return self._roi

    def check_unselected(self, what: str) -> None:
        """Refuse a selection other than an ROI, for uses that read whole ROIs (``what``)."""
        if self._selection and self._roi is None:
            raise InputError(
                f"{what} reads an encoder's ROI, but this encoder ({self._name}) keeps "
                "a selection of " + " and ".join(counted(len(index), dim) for dim, index in
                                                 self._selection.items()) + "; load it without "
                "channels=/timepoints=/lh_vertices=/rh_vertices= (objectives.eeg(channels=, "
                "times=) selects EEG outputs)")

    @property
    def device(self) -> str:
        """The torch device the model runs on (``"cpu"``, ``"cuda:0"``...)."""
        return str(self._device)

    @property
    def selection(self) -> dict[str, np.ndarray]:
        """Positions of the kept outputs per dimension (empty: all of them)."""
        return {dim: index.copy() for dim, index in self._selection.items()}

    @property
    def sizes(self) -> dict[str, int]:
        """Size of each output dimension per image, after the selection."""
        loaded = self.loaded
        return {dim: len(self._selection[dim]) if dim in self._selection else n
                for dim, n in zip(loaded.dims[1:], loaded.row_shape, strict=True)}

    def get_metadata(self) -> xr.Dataset:
        """The labels of the outputs, without encoding anything (BERG's ``get_metadata``).

        Returns
        -------
        xarray.Dataset
            The coordinates of the output dimensions (voxel ``ncsnr``, ``r2`` and positions;
            EEG channel names and times; vertex indices and accuracies), selection applied,
            and the attributes every encoded array carries.

        Examples
        --------
        >>> import nest_data
        >>> with nest_data.encoder(subject=1, roi="V1", location="demo") as v1:
        ...     meta = v1.get_metadata()
        >>> meta.sizes["voxel"], meta.attrs["roi"]
        (1350, 'V1')
        """
        loaded = self.loaded
        empty = loaded.labelled(np.empty((0, *loaded.row_shape), dtype=np.float32), [])
        if "vertex" in loaded.dims:
            empty.attrs["roi"] = self._roi_label
        if self._selection:
            empty = empty.isel(self._selection)
        return xr.Dataset(coords=empty.drop_vars("image").coords, attrs=empty.attrs)

    def describe(self) -> str:
        """The model card: what the encoder is, its outputs, weights and device.

        Returns
        -------
        str
            Several lines of text (BERG's ``describe()``); print it to read it.

        Examples
        --------
        >>> import nest_data
        >>> with nest_data.encoder(subject=1, roi="V1", location="demo", device="cpu") as v1:
        ...     card = v1.describe().splitlines()
        >>> card[0]
        'NEST encoder fmri/nsd/fwrf, subject 1, ROI V1'
        >>> [line for line in card if line.startswith(("output", "device"))]  # doctest: +ELLIPSIS
        ['output: (image, voxel), 1350 voxels per image, float32 (predicted ...)', 'device: cpu']
        """
        loaded = self.loaded
        attrs = loaded.attrs
        keys = self.keys
        sizes = self.sizes
        shape = ", ".join(counted(n, dim) for dim, n in sizes.items())
        is_fwrf = "voxel" in loaded.dims
        lines = [f"NEST encoder {keys['modality']}/{keys['train_dataset']}/{keys['model']}, "
                 f"subject {int(keys['subject'])}"
                 + (f", ROI {self._roi_label}" if self._roi_label else ""),
                 *([self._description] if self._description else []),
                 "input: RGB images, integers 0..255, center-cropped to a square, then "
                 + ("resized to 227 x 227 pixels" if is_fwrf else
                    "resized to 256 and center-cropped to 224 x 224 (ImageNet's)"),
                 f"output: ({', '.join(loaded.dims)}), {shape} per image, float32 "
                 f"({attrs.get('units') or 'units unknown'})"]
        if self._selection:
            lines.append("selection: " + "; ".join(
                f"{len(index)} of {counted(loaded.row_shape[loaded.dims.index(dim) - 1], dim)}"
                for dim, index in self._selection.items()))
        lines.append(f"weights: {redact_url(self.source.weights_url)} "
                     f"({attrs.get('weights_sha256', '')})")
        if self.source.backbone_url:
            lines.append(f"backbone: {redact_url(self.source.backbone_url)} "
                         f"({attrs.get('backbone_sha256', '')})")
        lines += [f"parameters: {self.n_parameters:,} ({self.nbytes / 1e6:.1f} MB)",
                  f"device: {self.device}",
                  f"source: {attrs.get('source', '')}"]
        return "\n".join(lines)

    @property
    def n_parameters(self) -> int:
        """Number of the model's parameters (weights and buffers)."""
        model = self.loaded.model
        return sum(t.numel() for t in (*model.parameters(), *model.buffers()))

    @property
    def nbytes(self) -> int:
        """Bytes the model's parameters and buffers take on its device."""
        model = self.loaded.model
        return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))

    def __repr__(self) -> str:
        if self._loaded is None:
            return f"<nest_data.Encoder {self._name} (freed)>"
        shape = ", ".join(counted(n, dim) for dim, n in self.sizes.items())
        return (f"<nest_data.Encoder {self._name}: ({', '.join(self.loaded.dims)}) {shape} on "
                f"{self.device}>")

    # -------------------------------------------------------------------- what it does

    @_config.progress_option
    def encode(self, images: Any, *, image_ids: Sequence[str] | None = None,
               batch_size: int = 16, cache: bool = True,
               show_progress: bool | None = None) -> xr.DataArray:
        """Responses to images, labelled as a stored entry (see :func:`nest_data.encode`).

        Parameters
        ----------
        images, image_ids, batch_size, cache, show_progress
            As in :func:`nest_data.encode`.

        Returns
        -------
        xarray.DataArray
            ``responses`` with this encoder's selection.

        Examples
        --------
        >>> import nest_data
        >>> from nest_data.synthetic import test_images
        >>> with nest_data.encoder(subject=1, roi="V1", location="demo") as v1:
        ...     da = v1.encode(test_images(2, 64), show_progress=False)
        >>> da.sizes["voxel"]
        1350
        """
        arrays = as_images(images)
        hashes = [content_hash(a) for a in arrays]
        return self._encode(arrays, hashes, image_ids if image_ids is not None
                            else image_labels(images, hashes), image_ids is None,
                            batch_size, cache)

    def _encode(self, arrays: list[np.ndarray], hashes: list[str], ids: Sequence[str],
                own_labels: bool, batch_size: int, cache: bool) -> xr.DataArray:
        """:meth:`encode` of decoded images with their hashes and labels."""
        if batch_size < 1:
            raise InputError(f"batch_size must be a positive number of images, got {batch_size}")
        if len(ids) != len(arrays):
            raise InputError(f"{len(ids)} image_ids for {len(arrays)} images; give one id per "
                             "image, or none for the default labels (file names, else content "
                             "hashes)")
        loaded = self.loaded
        out = np.empty((len(arrays), *loaded.row_shape), dtype=np.float32)
        store = ResponseCache(loaded.digest) if cache else None
        todo = []
        for index, image_hash in enumerate(hashes):
            cached = store.get(image_hash) if store is not None else None
            if cached is not None and cached.shape == loaded.row_shape:
                out[index] = cached
            else:
                todo.append(index)
        loaded.to(self._device)  # another user of the shared model may have moved it
        for start in tqdm(range(0, len(todo), batch_size), desc="encoding", unit="batch",
                          disable=not _config.show_progress()):
            rows = todo[start:start + batch_size]
            out[rows] = loaded([arrays[i] for i in rows], self._device)
            if store is not None:
                for i in rows:
                    store.put(hashes[i], out[i])
        logger.info("encoded %d images with %s on %s (%d from the cache)", len(arrays),
                    self._name, self.device, len(arrays) - len(todo))
        da = loaded.labelled(out, ids)
        if own_labels:  # labels of ours: the pixels' identity goes with them
            da = da.assign_coords(image_sha256=("image", np.asarray(hashes, dtype=object), {
                "description": "SHA-256 of the image's pixels as encoded (after the center "
                               "crop)"}))
        if "vertex" in loaded.dims:
            da.attrs["roi"] = self._roi_label
        return da.isel(self._selection) if self._selection else da

    __call__ = encode

    def to(self, device: str) -> Encoder:
        """Move the model to another device; return the encoder.

        Examples
        --------
        >>> import nest_data
        >>> with nest_data.encoder(subject=1, roi="V1", location="demo") as v1:
        ...     v1.to("cpu").device
        'cpu'
        """
        self._device = torch_device(device)
        self.loaded.to(self._device)
        return self

    def free(self) -> None:
        """Release the model: the process no longer keeps it, and its memory (GPU memory
        included) goes once no other encoder or call holds it.  Freeing twice is harmless;
        using a freed encoder raises :class:`~nest_data.errors.EncoderFreedError`."""
        if self._loaded is None:
            return
        loaded, self._loaded = self._loaded, None
        release(loaded)
        cuda = self._device.type == "cuda"
        del loaded
        gc.collect()
        if cuda:
            import torch

            torch.cuda.empty_cache()
        logger.info("freed the encoder %s", self._name)

    close = free

    def __enter__(self) -> Encoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.free()


def check_alone(what: str, **values: Any) -> None:
    """Refuse keys given along with ``encoder=``: the encoder fixes them (None: not given)."""
    given = sorted(name for name, value in values.items() if value is not None)
    if given:
        raise InputError(f"{what}: encoder= is given, and so are {', '.join(given)}: the "
                         "encoder already fixes its model, selection, weights and device; "
                         "drop those arguments (or drop encoder= to load by keys)")


@_config.progress_option
def encode(
    images: Any,
    *,
    subject: int | str | None = None,
    roi: str | None = None,
    modality: str = "fmri",
    train_dataset: str | None = None,
    model: str | None = None,
    channels: Sequence[str] | None = None,
    timepoints: Any = None,
    lh_vertices: Any = None,
    rh_vertices: Any = None,
    image_ids: Sequence[str] | None = None,
    location: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    backbone: str | os.PathLike[str] | None = None,
    batch_size: int = 16,
    device: str = "auto",
    cache: bool = True,
    show_progress: bool | None = None,
    catalog: Catalog | None = None,
    encoder: Encoder | None = None,
) -> xr.DataArray:
    """Responses of a NEST encoder to images, in the labelled form of a stored entry.

    Parameters
    ----------
    images : array, PIL image, path, or a list of them
        RGB images with integer values in 0..255 (uint8, or any integer dtype as NED
        took them): an array ``(B, 3, H, W)`` or ``(B, H, W, 3)``, a list of
        ``(H, W, 3)``/``(3, H, W)`` arrays, PIL images or file paths.  Non-square images are
        center-cropped to their shorter side; then the encoder's own preprocessing applies
        (fMRI: resize to 227; EEG: ImageNet's resize to 256 and center crop 224).
    subject : int or str
        Subject (1-8 for fMRI, 1-10 for EEG); not with ``encoder=``.
    roi : str
        fMRI ROI; ``lateral`` and ``ventral`` run both halves of NEST's split encoder.  For
        the fsaverage encoder, one of BERG's 31 surface ROIs (both hemispheres' vertices);
        omitted, the whole surface.
    modality : {"fmri", "eeg"}
        ``"eeg"`` runs the THINGS-EEG2 ViT-B/32 encoder (no ``roi``).
    train_dataset, model : str, optional
        Choose the fMRI encoder: ``train_dataset="nsd_fsaverage"`` (``model="vit_b_32"``)
        is BERG's fsaverage surface model; an ROI only the surface model has (``"V1v"``)
        picks it too.  Default: the fwRF model (``nsd``/``fwrf``).
    channels : list of str, optional
        EEG only: keep these channels (BERG's ``selection={'channels': [...]}``).
    timepoints : array, optional
        EEG only: a boolean (one-hot) mask over the 140 time points, as BERG's
        ``selection={'timepoints': ...}``, or integer indices.
    lh_vertices, rh_vertices : array, optional
        fsaverage only, without ``roi``: BERG's one-hot vectors over a hemisphere's 163,842
        vertices (or integer indices); a hemisphere without one keeps all its vertices.
    image_ids : sequence of str, optional
        Labels of the images.  Default: the file name of an image given by its path
        (``cat.jpg``; the path as given when two files share a name), else the first 16
        hexadecimal digits of the SHA-256 of its pixels; these default labels come with
        the ``image_sha256`` coordinate (the whole SHA-256 of each image's pixels).  Labels
        given here are kept as given, without it.
    location : str, optional
        Location whose root holds the converted weights (``weights/...``, see
        ``nest-data convert weights``); default lookup as in :func:`nest_data.open`.
    storage_options : dict, optional
        fsspec options, merged over the location's own.
    backbone : path or URL, optional
        EEG only: the converted ViT-B/32 weights (a folder from ``nest-data convert weights
        --vit-b-32``, or a ``.safetensors`` state_dict).  Default: ``NEST_DATA_VIT_B_32``,
        then the catalog's ``backbone_path`` under the location.
    batch_size : int
        Images per forward pass.
    device : str
        ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
    cache : bool
        Keep computed responses in the local cache (``<cache dir>/responses``), keyed by the
        weights' and each image's SHA-256: asking again computes nothing.
    show_progress : bool, optional
        Progress bar over batches.
    catalog : Catalog, optional
        The catalog that resolves the keys (default: the built-in one).
    encoder : Encoder, optional
        An encoder loaded by :func:`nest_data.encoder` (BERG's ``encode(model, images)``);
        then give none of the keys, the selection, the location or the device: it has them.

    Returns
    -------
    xarray.DataArray
        ``responses``, float32, with dims ``(image, voxel)`` and the voxel labels of the
        stored entries, or ``(image, repetition, channel, time)`` with channel names, times
        and accuracy maps (never squeezed, even for one image), or ``(image, vertex)`` with
        ``hemisphere``, ``fsaverage_index`` and the per-vertex accuracies, in BERG's order
        (left hemisphere first, by index); ``image`` = the ids.

    Raises
    ------
    InputError
        Bad images, ids, selection, batch size or device; the message says what is valid.
    StoreNotFoundError
        No converted weights where the catalog says (the message says how to convert them).

    Examples
    --------
    With weights converted by ``nest-data convert weights`` under ``location``:

    >>> import numpy as np, nest_data
    >>> images = np.zeros((2, 64, 64, 3), "uint8")
    >>> nest_data.encode(images, subject=1, roi="V1", location="/nowhere")
    Traceback (most recent call last):
    ...
    nest_data.errors.StoreNotFoundError: no converted weights at /nowhere/weights/...
    """
    if encoder is not None:
        check_alone("encode()", subject=subject, roi=roi, train_dataset=train_dataset,
                    model=model, channels=channels, timepoints=timepoints,
                    lh_vertices=lh_vertices, rh_vertices=rh_vertices, location=location,
                    storage_options=storage_options, backbone=backbone, catalog=catalog,
                    modality=None if modality == "fmri" else modality,
                    device=None if device == "auto" else device)
        return encoder.encode(images, image_ids=image_ids, batch_size=batch_size, cache=cache)
    if subject is None:
        raise InputError("give subject= (with roi=, modality=... as needed) or encoder= "
                         "(from nest_data.encoder(...))")
    if batch_size < 1:
        raise InputError(f"batch_size must be a positive number of images, got {batch_size}")
    if modality not in ("fmri", "eeg"):
        raise InputError(f"modality={modality!r}; encoders exist for 'fmri' (fwRF, with "
                         "roi=) and 'eeg' (ViT-B/32)")
    arrays = as_images(images)  # bad images fail before any weights are read
    hashes = [content_hash(a) for a in arrays]
    ids = list(image_ids) if image_ids is not None else image_labels(images, hashes)
    if len(ids) != len(arrays):
        raise InputError(f"{len(ids)} image_ids for {len(arrays)} images; give one id per "
                         "image, or none for the default labels (file names, else content "
                         "hashes)")
    source = EncoderSource.resolve(subject=subject, roi=roi, modality=modality,
                                   train_dataset=train_dataset, model=model, location=location,
                                   storage_options=storage_options, backbone=backbone,
                                   catalog=catalog)
    return Encoder(source, roi=roi, channels=channels, timepoints=timepoints,
                   lh_vertices=lh_vertices, rh_vertices=rh_vertices, device=device,
                   catalog=catalog)._encode(arrays, hashes, ids, image_ids is None,
                                            batch_size, cache)
