"""The encoders an objective reads: loaded once, run once per batch, labelled."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from nest_data._catalog import Catalog
from nest_data._catalog import catalog as default_catalog
from nest_data._encode import Encoder
from nest_data._models import EncoderSource, LoadedEncoder
from nest_data.errors import InputError
from nest_data.gradients.objectives import Objective, Target, as_objective

if TYPE_CHECKING:
    import torch


def prepare(what: str, objective: str | Objective, *, subject: int | str | None,
            roi: str | None, modality: str, train_dataset: str | None,
            encoder: Encoder | Sequence[Encoder] | None, device: str | None
            ) -> tuple[Objective, int | str, list[Encoder], str]:
    """The objective, subject, given encoders and device of ``what`` (``"dream()"``).

    Encoders given (``encoder=``) fix the subject, and for ``objective="mean"`` the target
    (one encoder: its ROI, modality and model); ``device`` defaults to theirs, else the CPU.
    """
    given = [] if encoder is None else [encoder] if isinstance(encoder, Encoder) else list(
        encoder)
    if any(not isinstance(e, Encoder) for e in given) or (encoder is not None and not given):
        raise InputError(f"{what}: encoder= takes an encoder from nest_data.encoder(...) or a "
                         f"list of them; got {encoder!r}")
    if not given:
        if subject is None:
            raise InputError(f"{what}: give subject= (the subject whose encoders answer) or "
                             "encoder= (from nest_data.encoder(...))")
        return as_objective(objective, roi, modality, train_dataset), subject, [], device or "cpu"
    subjects = sorted({int(e.keys["subject"]) for e in given})
    if subject is not None or len(subjects) > 1:
        raise InputError(f"{what}: the encoders given are of subject(s) {subjects}"
                         + (f" and subject={subject!r} is given too" if subject is not None
                            else "") + "; give encoders of one subject, without subject=")
    for e in given:
        e.check_unselected(what)
    if isinstance(objective, str) and objective == "mean" and (roi, modality, train_dataset) == (
            None, "fmri", None):
        if len(given) > 1:
            raise InputError(f"{what}: objective='mean' with {len(given)} encoders; name the "
                             "ROI (roi=) or give an Objective of their ROIs")
        keys = given[0].keys
        roi, modality = given[0].roi, keys["modality"]
        train_dataset = keys["train_dataset"] if given[0].source.surface else None
    return (as_objective(objective, roi, modality, train_dataset), subjects[0], given,
            device or given[0].device)


def load_targets(objective: Objective, *, subject: int | str, location: str | None,
                 storage_options: Mapping[str, Any] | None,
                 backbone: str | os.PathLike[str] | None, catalog: Catalog | None,
                 device: Any, given: Sequence[Encoder] = ()) -> dict[Target, LoadedEncoder]:
    """Each target's encoder, on ``device`` (targets of one model share one encoder): one of
    ``given`` where its weights are the target's, else loaded from ``location``."""
    encoders = {}
    cat = catalog or default_catalog()
    for target in objective.targets:
        match = None
        if given:
            rel = cat.resolve_weights(subject=subject, roi=target.roi, modality=target.modality,
                                      train_dataset=target.train_dataset)[1]
            match = next((e for e in given if e.source.path == rel), None)
        loaded = match.loaded if match is not None else EncoderSource.resolve(
            subject=subject, roi=target.roi, modality=target.modality,
            train_dataset=target.train_dataset, location=location,
            storage_options=storage_options, backbone=backbone, catalog=catalog).load()
        encoders[target] = loaded.to(device)
    return encoders


def run(encoders: Mapping[Target, LoadedEncoder], images: torch.Tensor
        ) -> dict[Target, torch.Tensor]:
    """Every target's responses to float images ``(B, 3, S, S)`` in [0, 1], with gradients;
    an encoder that several targets share runs once."""
    done: dict[int, torch.Tensor] = {}
    out = {}
    for target, encoder in encoders.items():
        if id(encoder) not in done:
            done[id(encoder)] = encoder.float_responses(images)
        out[target] = done[id(encoder)]
    return out


def labelled(encoders: Mapping[Target, LoadedEncoder],
             responses: Mapping[Target, torch.Tensor], ids: Sequence[str]
             ) -> dict[str, xr.DataArray]:
    """Each target's responses as labelled ``responses`` (a surface ROI: its vertices)."""
    out = {}
    for target, encoder in encoders.items():
        values = responses[target].detach().float().cpu().numpy()
        da = encoder.labelled(np.asarray(values, dtype=np.float32), ids)
        units = target.units(encoder)
        if units is not None:
            da = da.isel({encoder.dims[-1]: units})
            da.attrs["roi"] = target.roi
        out[target.label] = da
    return out
