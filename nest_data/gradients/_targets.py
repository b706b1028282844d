"""The encoders an objective reads: loaded once, run once per batch, labelled."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from nest_data._catalog import Catalog
from nest_data._models import EncoderSource, LoadedEncoder
from nest_data.gradients.objectives import Objective, Target

if TYPE_CHECKING:
    import torch


def load_targets(objective: Objective, *, subject: int | str, location: str | None,
                 storage_options: Mapping[str, Any] | None,
                 backbone: str | os.PathLike[str] | None, catalog: Catalog | None,
                 device: Any) -> dict[Target, LoadedEncoder]:
    """Each target's encoder, on ``device`` (targets of one model share one encoder)."""
    encoders = {}
    for target in objective.targets:
        source = EncoderSource.resolve(
            subject=subject, roi=target.roi, modality=target.modality,
            train_dataset=target.train_dataset, location=location,
            storage_options=storage_options, backbone=backbone, catalog=catalog)
        encoders[target] = source.load().to(device)
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
