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

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nest_data import _config
from nest_data._catalog import Catalog
from nest_data._urls import is_local, local_path
from nest_data.converters._common import (
    as_set,
)
from nest_data.converters.eeg import (
    convert_eeg_weights,
    convert_vit_b_32,
    discover_eeg,
)
from nest_data.converters.fsaverage import (
    convert_fsaverage_weights,
    discover_fsaverage,
)
from nest_data.converters.fwrf import convert_fwrf_weights, discover_fwrf
from nest_data.encoders.weights import MODEL_FILE, WEIGHTS_FILE
from nest_data.errors import ConversionError

logger = logging.getLogger("nest_data")

__all__ = ["MODEL_FILE", "WEIGHTS_FILE", "convert_eeg_weights", "convert_fsaverage_weights",
           "convert_fwrf_weights", "convert_vit_b_32", "convert_weights"]


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
                                        modality=modality, subjects=as_set(subject) or None,
                                        pickles=trust_pickles):
            written += convert_weights(local, dest, modality=modality,
                                       trust_pickles=trust_pickles, roi=roi,
                                       storage_options=storage_options, catalog=catalog)
        return written
    if source_options:
        raise ConversionError(f"source_options {sorted(source_options)} given, but SRC {src} is "
                              "a local folder; they are for a remote SRC (s3://..., gs://...)")
    root = Path(local_path(os.fspath(src)))
    has_fmri = bool(discover_fwrf(root, catalog)) if modality != "eeg" else False
    has_surface = bool(discover_fsaverage(root)) if modality != "eeg" else False
    has_eeg = bool(discover_eeg(root)) if modality != "fmri" else False
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
