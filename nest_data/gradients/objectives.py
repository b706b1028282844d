"""Objectives over an encoder's labelled responses, for :func:`nest_data.dream` and
:func:`nest_data.saliency`.

An :class:`Objective` scores each image of a batch (a tensor ``(B,)``, higher is better) from
the responses of one or more encoders of one subject, and from their responses to reference
images (where :func:`nest_data.dream` started; :func:`nest_data.saliency`'s baseline).
Objectives compose like numbers: ``-roi_mean("V1")`` minimises, ``roi_mean("FFA-1") +
0.1 * diversity("FFA-1")`` weighs a term, and :func:`contrast` raises one ROI while it lowers
another (RNC's *disentangle* in image space).  Each term names the encoders it reads (its
:class:`Target`): an fMRI ROI of the fwRF model, an ROI of BERG's fsaverage surface model,
or the EEG model.

Examples
--------
>>> from nest_data import objectives as obj
>>> goal = obj.contrast("FFA-1", "PPA") + 0.5 * obj.diversity("FFA-1")
>>> goal
contrast('FFA-1', 'PPA') + 0.5 * diversity('FFA-1')
>>> sorted(t.label for t in goal.targets)
['FFA-1', 'PPA']
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from nest_data.errors import InputError
from nest_data.gradients._checks import Range, refuse

if TYPE_CHECKING:
    import torch

    from nest_data._models import LoadedEncoder

__all__ = ["Objective", "Target", "contrast", "diversity", "eeg", "roi_mean", "unit", "voxels"]


@dataclass(frozen=True)
class Target:
    """One encoder of a subject an objective reads: an fMRI ROI, a surface ROI, or EEG.

    Parameters
    ----------
    roi : str, optional
        The ROI (fMRI); None for EEG, or for the whole fsaverage surface.
    modality : {"fmri", "eeg"}
    train_dataset : str, optional
        ``"nsd_fsaverage"`` for BERG's surface model; default the fwRF model (fMRI).
    """

    roi: str | None = None
    modality: str = "fmri"
    train_dataset: str | None = None

    @property
    def label(self) -> str:
        """A short name: the ROI, ``"eeg"``, or ``"fsaverage FFA-1"``."""
        if self.modality == "eeg":
            return "eeg"
        if self.train_dataset:
            return f"{self.train_dataset.removeprefix('nsd_')} {self.roi or 'surface'}"
        return str(self.roi)

    def units(self, encoder: LoadedEncoder) -> np.ndarray | None:
        """Positions of the target's units in the encoder's output (None: all of them)."""
        if "vertex" in encoder.dims and self.roi is not None:
            if self.roi not in encoder.rois:
                raise InputError(f"ROI {self.roi!r} has no vertex selection in these surface "
                                 f"weights; ROIs available: {', '.join(encoder.rois) or 'none'}")
            return np.sort(encoder.rois[self.roi])
        return None


#: Valid weights of a term (``0.2 * diversity("FFA-1")``).
WEIGHT = Range("a term's weight")
#: A one-target term's score: (responses, encoder, reference responses) -> a tensor (B,).
Score = Callable[["torch.Tensor", "LoadedEncoder", "torch.Tensor"], "torch.Tensor"]
#: A term's score over its targets: the same, one list entry per target.
MultiScore = Callable[[list["torch.Tensor"], list["LoadedEncoder"], list["torch.Tensor"]],
                      "torch.Tensor"]


@dataclass(frozen=True)
class _Term:
    weight: float
    targets: tuple[Target, ...]
    score: MultiScore
    name: str


def _term(target: Target, score: Score, name: str) -> Objective:
    """An objective of one term that reads one target."""
    return Objective([_Term(1.0, (target,), lambda v, e, r: score(v[0], e[0], r[0]), name)])


class Objective:
    """A weighted sum of terms, each scoring every image from one target's responses.

    Build objectives with :func:`roi_mean`, :func:`voxels`, :func:`unit`, :func:`contrast`,
    :func:`eeg` and :func:`diversity`, and combine them with ``+``, ``-`` and a number
    ``*``.  Calling one on ``{target: responses}`` (tensors ``(B, ...)``) and the targets'
    encoders, and the targets' responses to the reference images (``(B, ...)`` or
    ``(1, ...)``), returns a tensor ``(B,)``.
    """

    def __init__(self, terms: Sequence[_Term]) -> None:
        self.terms = tuple(terms)

    @property
    def targets(self) -> tuple[Target, ...]:
        """The encoders this objective reads, in order of first use."""
        return tuple(dict.fromkeys(t for term in self.terms for t in term.targets))

    def __call__(self, responses: Mapping[Target, torch.Tensor],
                 encoders: Mapping[Target, LoadedEncoder],
                 reference: Mapping[Target, torch.Tensor]) -> torch.Tensor:
        total = None
        for term in self.terms:
            value = term.weight * term.score([responses[t] for t in term.targets],
                                             [encoders[t] for t in term.targets],
                                             [reference[t] for t in term.targets])
            total = value if total is None else total + value
        assert total is not None  # an Objective has at least one term
        return total

    def __add__(self, other: Objective) -> Objective:
        if not isinstance(other, Objective):
            return NotImplemented
        return Objective(self.terms + other.terms)

    def __sub__(self, other: Objective) -> Objective:
        if not isinstance(other, Objective):
            return NotImplemented
        return self + (-1.0) * other

    def __neg__(self) -> Objective:
        return (-1.0) * self

    def __mul__(self, factor: float) -> Objective:
        if isinstance(factor, bool) or not isinstance(factor, numbers.Real):
            return NotImplemented
        refuse("an Objective's weight", [WEIGHT.problem("weight", factor)])
        return Objective([_Term(t.weight * float(factor), t.targets, t.score, t.name)
                          for t in self.terms])

    __rmul__ = __mul__

    def __repr__(self) -> str:
        parts = []
        for i, t in enumerate(self.terms):
            weight = abs(t.weight) if i else t.weight
            text = t.name if weight == 1 else ("-" + t.name if weight == -1
                                              else f"{weight:g} * {t.name}")
            sign = "" if i == 0 else (" - " if t.weight < 0 else " + ")
            parts.append(sign + text)
        return "".join(parts)


def _target(roi: str | None, modality: str, train_dataset: str | None) -> Target:
    if modality not in ("fmri", "eeg"):
        raise InputError(f"modality={modality!r}; objectives read 'fmri' or 'eeg' encoders")
    if modality == "fmri" and roi is None and train_dataset is None:
        raise InputError("an fMRI objective needs roi= (the fwRF model has one encoder per "
                         "ROI), or train_dataset='nsd_fsaverage' for the whole surface")
    if modality == "eeg" and roi is not None:
        raise InputError(f"roi={roi!r} given for the EEG model, which has no ROIs; choose "
                         "channels and times with eeg(channels=, times=)")
    return Target(roi, modality, train_dataset)


def _flat(values: torch.Tensor, units: np.ndarray | None) -> torch.Tensor:
    """Responses as (B, units), the target's units only."""
    flat = values.reshape(values.shape[0], -1)
    if units is None:
        return flat
    import torch

    return flat[:, torch.as_tensor(units, device=flat.device)]


def roi_mean(roi: str | None = None, *, modality: str = "fmri",
             train_dataset: str | None = None, min_ncsnr: float | None = None) -> Objective:
    """The mean response over an ROI's voxels (or a surface ROI's vertices).

    Parameters
    ----------
    roi : str
        The ROI; for ``train_dataset="nsd_fsaverage"``, one of BERG's surface ROIs (or None
        for the whole surface).
    modality, train_dataset : str
        Which encoder (default: NEST's fwRF model).
    min_ncsnr : float, optional
        Only voxels whose ``ncsnr`` exceeds this (see :func:`voxels`).

    Examples
    --------
    >>> -roi_mean("V1")
    -roi_mean('V1')
    """
    if min_ncsnr is not None:
        refuse("roi_mean()", [Range("an ncsnr threshold").problem("min_ncsnr", min_ncsnr)])
        return voxels(roi, lambda labels: labels["ncsnr"] > min_ncsnr, modality=modality,
                      train_dataset=train_dataset, name=f"roi_mean({roi!r}, "
                      f"min_ncsnr={min_ncsnr!r})")
    target = _target(roi, modality, train_dataset)

    def score(values: torch.Tensor, encoder: LoadedEncoder, _: torch.Tensor) -> torch.Tensor:
        return _flat(values, target.units(encoder)).mean(dim=1)

    return _term(target, score, f"roi_mean({roi!r})")


def voxels(roi: str | None, where: Callable[[Mapping[str, np.ndarray]], Any], *,
           modality: str = "fmri", train_dataset: str | None = None,
           name: str | None = None) -> Objective:
    """The mean response over the units whose labels pass ``where``.

    ``where`` gets the encoder's per-unit labels (``ncsnr``, ``r2``, ``i``/``j``/``k``,
    ``hemisphere``...: name -> array over the units) and returns a boolean mask.

    Examples
    --------
    >>> voxels("V1", lambda labels: labels["ncsnr"] > 0.5, name="reliable V1")
    reliable V1
    """
    target = _target(roi, modality, train_dataset)

    def score(values: torch.Tensor, encoder: LoadedEncoder, _: torch.Tensor) -> torch.Tensor:
        units = target.units(encoder)
        labels = _unit_labels(encoder, units)
        try:
            mask = np.asarray(where(labels), dtype=bool)
        except KeyError as exc:
            raise InputError(f"voxels() selection for {target.label} asks for the label "
                             f"{exc}; labels: {', '.join(sorted(labels))}") from exc
        n = values.reshape(values.shape[0], -1).shape[1] if units is None else len(units)
        if mask.shape != (n,) or not mask.any():
            raise InputError(f"voxels() selection for {target.label} selects "
                             f"{int(mask.sum()) if mask.shape == (n,) else 'a wrong shape of'}"
                             f" units of {n}; give a condition true for some units")
        chosen = np.flatnonzero(mask) if units is None else units[mask]
        return _flat(values, chosen).mean(dim=1)

    return _term(target, score, name or f"voxels({roi!r}, where=...)")


def _unit_labels(encoder: LoadedEncoder, units: np.ndarray | None) -> dict[str, np.ndarray]:
    """The encoder's labels along its unit dimension (voxel or vertex), of ``units``."""
    dim = encoder.dims[-1]
    labels = {name: np.asarray(values) for name, (dims, values) in encoder.coords.items()
              if dims == (dim,)}
    return labels if units is None else {k: v[units] for k, v in labels.items()}


def unit(roi: str | None, index: int, *, modality: str = "fmri",
         train_dataset: str | None = None) -> Objective:
    """One voxel (or vertex) of a target, by its position in the encoder's output.

    Examples
    --------
    >>> unit("V1", 12)
    unit('V1', 12)
    """
    refuse("unit()", [Range("the position of one voxel", 0, integer=True).problem(
        "index", index)])
    target = _target(roi, modality, train_dataset)

    def score(values: torch.Tensor, encoder: LoadedEncoder, _: torch.Tensor) -> torch.Tensor:
        units = target.units(encoder)
        chosen = np.arange(values[0].numel()) if units is None else units
        if index >= len(chosen):
            raise InputError(f"unit {index} of {target.label}, which has {len(chosen)} units "
                             f"(0..{len(chosen) - 1})")
        return _flat(values, chosen[[index]])[:, 0]

    return _term(target, score, f"unit({roi!r}, {int(index)})")


def contrast(up: str, down: str, *, train_dataset: str | None = None) -> Objective:
    """One ROI's mean response up while another's goes down (RNC's disentangling).

    Each ROI's change from the reference images (where a dream started) is measured in
    units of the spread of its voxels' reference responses, and the objective is the
    smaller of the two: ``min(up's rise, down's fall)``.  Only images that move *both*
    ROIs score: two ROIs that share features (every fwRF ROI shares NEST's trunk) would
    otherwise rise together under ``roi_mean(up) - roi_mean(down)``.

    Examples
    --------
    >>> contrast("FFA-1", "PPA")
    contrast('FFA-1', 'PPA')
    """
    first, second = (_target(roi, "fmri", train_dataset) for roi in (up, down))

    def score(values: list[torch.Tensor], encoders: list[LoadedEncoder],
              reference: list[torch.Tensor]) -> torch.Tensor:
        import torch

        change = []
        for sign, v, e, r, t in zip((1.0, -1.0), values, encoders, reference,
                                    (first, second), strict=True):
            now, before = _flat(v, t.units(e)), _flat(r, t.units(e))
            spread = before.std(dim=1).clamp(min=1e-12)
            change.append(sign * (now.mean(dim=1) - before.mean(dim=1)) / spread)
        return torch.minimum(*change)

    return Objective([_Term(1.0, (first, second), score, f"contrast({up!r}, {down!r})")])


def eeg(channels: str | Sequence[str] | None = None,
        times: tuple[float, float] | None = None) -> Objective:
    """The EEG model's mean response over channels and a time window (and repetitions).

    Parameters
    ----------
    channels : str or list of str, optional
        Channel names (default: all 63).
    times : (float, float), optional
        A window in seconds, both ends included (default: all 140 time points).

    Examples
    --------
    >>> eeg(["O1", "Oz", "O2"], times=(0.1, 0.2))
    eeg(['O1', 'Oz', 'O2'], times=(0.1, 0.2))
    """
    wanted = [channels] if isinstance(channels, str) else (
        list(channels) if channels is not None else None)
    seconds = Range("seconds")
    if times is not None and (isinstance(times, str) or not isinstance(times, Sequence)
                              or len(times) != 2 or not all(map(seconds.contains, times))
                              or times[0] > times[1]):
        raise InputError(f"times={times!r}: give a window (start, stop) in seconds, two "
                         "finite numbers, start <= stop, e.g. (0.1, 0.2)")
    target = _target(None, "eeg", None)

    def score(values: torch.Tensor, encoder: LoadedEncoder, _: torch.Tensor) -> torch.Tensor:
        names = [str(c) for c in encoder.coords["channel"][1]]
        unknown = [c for c in wanted or [] if c not in names]
        if unknown or wanted == []:
            raise InputError(f"unknown channel(s) {unknown or wanted}; valid: "
                             + ", ".join(names))
        import torch

        chosen = values  # (B, repetition, channel, time)
        if wanted is not None:
            index = torch.as_tensor([names.index(c) for c in wanted], device=values.device)
            chosen = chosen.index_select(2, index)
        if times is not None:
            t = np.asarray(encoder.coords["time"][1], dtype=float)
            inside = np.flatnonzero((t >= times[0] - 1e-9) & (t <= times[1] + 1e-9))
            if not inside.size:
                raise InputError(f"times={times!r} holds none of the model's time points "
                                 f"({t[0]:g} to {t[-1]:g} s)")
            chosen = chosen.index_select(3, torch.as_tensor(inside, device=values.device))
        return chosen.reshape(chosen.shape[0], -1).mean(dim=1)

    text = [repr(wanted) if wanted is not None else ""] + (
        [f"times={tuple(times)!r}"] if times is not None else [])
    return _term(target, score, f"eeg({', '.join(p for p in text if p)})")


def diversity(roi: str | None = None, *, modality: str = "fmri",
              train_dataset: str | None = None) -> Objective:
    """How differently each image drives a target: minus the mean cosine similarity of its
    (batch-centred) response pattern with the other images' patterns.

    A batch term, as feature visualisation's diversity: add it (weighted) to an objective so
    the images of one batch find different ways to drive it.  A single image scores 0.

    Examples
    --------
    >>> roi_mean("FFA-1") + 0.2 * diversity("FFA-1")
    roi_mean('FFA-1') + 0.2 * diversity('FFA-1')
    """
    target = _target(roi, modality, train_dataset)

    def score(values: torch.Tensor, encoder: LoadedEncoder, _: torch.Tensor) -> torch.Tensor:
        import torch

        flat = _flat(values, target.units(encoder))
        n = flat.shape[0]
        if n < 2:
            return flat.new_zeros(n)
        centred = flat - flat.mean(dim=0, keepdim=True)
        unit_rows = torch.nn.functional.normalize(centred, dim=1)
        similarity = unit_rows @ unit_rows.T
        return -(similarity.sum(dim=1) - similarity.diagonal()) / (n - 1)

    name = f"diversity({roi!r})" if modality == "fmri" else "diversity(modality='eeg')"
    return _term(target, score, name)


def as_objective(objective: str | Objective, roi: str | None, modality: str,
                 train_dataset: str | None) -> Objective:
    """An :class:`Objective` from one, or from the shorthand ``"mean"`` (of ``roi``)."""
    if isinstance(objective, Objective):
        if roi is not None:
            raise InputError(f"roi={roi!r} given with an Objective, which names its own ROIs "
                             f"({objective!r}); drop roi=")
        return objective
    if objective == "mean":
        if modality == "eeg":
            return eeg()
        return roi_mean(roi, modality=modality, train_dataset=train_dataset)
    raise InputError(f"objective={objective!r}; give 'mean' (the ROI's mean response) or an "
                     "Objective from nest_data.objectives, e.g. "
                     "objectives.contrast('FFA-1', 'PPA')")
