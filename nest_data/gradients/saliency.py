"""Which pixels of an image drive an ROI: integrated gradients through the encoders."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from nest_data import _config
from nest_data._catalog import Catalog
from nest_data._images import as_images, content_hash, image_labels
from nest_data.errors import InputError
from nest_data.gradients._checks import (
    ENCODER_BYTES_PER_IMAGE,
    Range,
    check_finite,
    check_memory,
    refuse,
)
from nest_data.gradients.objectives import Objective

if TYPE_CHECKING:
    from nest_data._encode import Encoder

logger = logging.getLogger("nest_data")

__all__ = ["BASELINE_RULE", "METHODS", "RANGES", "saliency"]

#: Attribution methods :func:`saliency` knows.
METHODS = ("integrated_gradients",)
#: Baselines by name: black, mid-grey, white images.
BASELINES = {"black": 0.0, "grey": 0.5, "white": 1.0}
#: What a baseline is, for every error about one.
BASELINE_RULE = ("a baseline in the images' float scale [0, 1] (0 black, 1 white): one number "
                 "for every pixel, or an array (3, S, S) of the images' size")
#: Valid values of saliency's numeric arguments.
RANGES = {"steps": Range("intervals of the path integral", 1, integer=True),
          "batch_size": Range("path points per forward pass", 1, integer=True)}
#: Copies of a batch of path points one pass holds (the path, its gradient, the encoders'
#: preprocessing and its gradient).
PATH_COPIES = 8


@_config.progress_option
def saliency(
    images: Any,
    *,
    subject: int | str | None = None,
    roi: str | None = None,
    objective: str | Objective = "mean",
    modality: str = "fmri",
    train_dataset: str | None = None,
    method: str = "integrated_gradients",
    baseline: str | float | np.ndarray = "black",
    steps: int = 64,
    batch_size: int = 16,
    image_ids: Sequence[str] | None = None,
    location: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    backbone: str | os.PathLike[str] | None = None,
    device: str | None = None,
    show_progress: bool | None = None,
    catalog: Catalog | None = None,
    encoder: Encoder | Sequence[Encoder] | None = None,
) -> xr.DataArray:
    """Per-pixel attributions of an objective (by default an ROI's mean response).

    Integrated gradients (Sundararajan et al., 2017): the gradient of the objective along
    the straight path from a baseline image to the image, averaged (trapezoidal rule over
    ``steps`` intervals) and multiplied by the image's difference from the baseline.  The
    attributions of an image add up to its objective minus the baseline's (completeness),
    up to the quadrature error, which falls as ``1 / steps**2``.

    Parameters
    ----------
    images : array, PIL image, path, or a list of them
        As for :func:`nest_data.encode` (uint8 RGB; non-square images are center-cropped).
    subject, roi, modality, train_dataset
        The encoder, as for :func:`nest_data.encode` (not with ``encoder=``, which fixes
        the subject, and for ``objective="mean"`` the ROI).
    objective : "mean" or Objective
        What to explain: ``"mean"`` (the ROI's mean response), or any
        :class:`~nest_data.objectives.Objective` (then leave ``roi`` out).
    method : {"integrated_gradients"}
    baseline : {"black", "grey", "white"}, float or array
        The image that attributions are relative to, in the images' float scale [0, 1]
        (0 black, 1 white: what the encoders see of a uint8 image divided by 255): a name,
        one number for every pixel, or an array ``(3, S, S)`` of the images' size.  Numbers
        and arrays follow one rule, whatever their dtype: NaN, infinity and values outside
        [0, 1] are refused.
    steps : int
        Intervals of the path integral, at least 1.
    batch_size : int
        Path points per forward pass, at least 1 (memory grows with it).
    image_ids : sequence of str, optional
        Labels of the images (default: as :func:`nest_data.encode`: file names of images
        given by path, else the first 16 hexadecimal digits of the pixels' SHA-256).
    location, storage_options, backbone
        As for :func:`nest_data.encode`.
    device : str, optional
        ``"cpu"``, ``"cuda"`` or ``"auto"``; default the device of ``encoder``, else the CPU.
    show_progress : bool, optional
        Progress bar over images.
    catalog : Catalog, optional
        The catalog that resolves the keys (default: the built-in one).
    encoder : Encoder or list of Encoder, optional
        Encoders loaded by :func:`nest_data.encoder`, used for the targets whose weights
        they hold (others are loaded from ``location``).

    Returns
    -------
    xarray.DataArray
        ``saliency`` ``(image, rgb, y, x)`` float32 in the objective's units per pixel and
        colour (``.sum("rgb")`` for one map per image), with ``score`` (the
        objective of each image) and ``baseline_score`` along ``image``; its attrs record
        the method, baseline, steps and objective.

    Raises
    ------
    InputError
        No images, an argument outside its range, a baseline outside [0, 1], or a call
        whose estimated memory exceeds the device's (see ``NEST_DATA_MAX_MEMORY``).
    NonFiniteError
        An attribution came out NaN or infinite (the message names the image and where
        the objective stopped being finite): nothing NaN is returned.

    Examples
    --------
    >>> import nest_data
    >>> from nest_data.synthetic import test_images
    >>> maps = nest_data.saliency(test_images(1, 64), subject=1, roi="V1", steps=8,
    ...                           location="demo", show_progress=False)
    >>> maps.dims
    ('image', 'rgb', 'y', 'x')
    >>> total = float(maps.sum())
    >>> expected = float(maps.score[0] - maps.baseline_score[0])
    >>> abs(total - expected) < 0.05 * abs(expected)
    True
    """
    import torch

    from nest_data._models import torch_device
    from nest_data.gradients import _targets

    goal, subject, given, device = _targets.prepare(
        "saliency()", objective, subject=subject, roi=roi, modality=modality,
        train_dataset=train_dataset, encoder=encoder, device=device)
    if method not in METHODS:
        raise InputError(f"method={method!r}; valid: {', '.join(METHODS)}")
    refuse("saliency()", [RANGES[name].problem(name, value) for name, value in
                          (("steps", steps), ("batch_size", batch_size))])
    arrays = as_images(images)
    if not arrays:
        raise InputError(f"no images in images={images!r}; give at least one image (an "
                         "array, a PIL image, a path, or a list of them)")
    ids = (list(image_ids) if image_ids is not None
           else image_labels(images, [content_hash(a) for a in arrays]))
    if len(ids) != len(arrays):
        raise InputError(f"{len(ids)} image_ids for {len(arrays)} images; give one id per "
                         "image, or none for the default labels (file names, else content "
                         "hashes)")
    sizes = {a.shape[-1] for a in arrays}
    if len(sizes) > 1:
        raise InputError(f"images of several sizes ({sorted(sizes)} pixels after the center "
                         "crop); give images of one size, or call saliency once per size")
    base = _baseline(baseline, arrays[0].shape)
    target = torch_device(device)
    check_memory("saliency()", _memory(len(arrays), arrays[0].shape[-1], steps, batch_size,
                                       len(goal.targets)),
                 "lower batch_size (path points per pass) or steps, give fewer or smaller "
                 "images per call, or set NEST_DATA_MAX_MEMORY", target)
    encoders = _targets.load_targets(goal, subject=subject, location=location,
                                     storage_options=storage_options, backbone=backbone,
                                     catalog=catalog, device=target,
                                     given=given)
    x0 = torch.from_numpy(base).to(target)[None]
    with torch.no_grad():
        reference = _targets.run(encoders, x0)
    alphas = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    weights = torch.full((steps + 1,), 1.0 / steps, dtype=torch.float64)
    weights[0] = weights[-1] = 0.5 / steps  # the trapezoidal rule
    out = np.empty((len(arrays), *arrays[0].shape), dtype=np.float32)
    scores = np.empty((len(arrays), 2), dtype=np.float64)  # image, baseline
    for index in tqdm(range(len(arrays)), desc="saliency", unit="image",
                      disable=not _config.show_progress()):
        x = torch.from_numpy(arrays[index]).to(target, torch.float32)[None] / 255.0
        total = torch.zeros_like(x, dtype=torch.float64)
        values = []  # the objective at every path point: [0] the baseline, [-1] the image
        for start in range(0, steps + 1, batch_size):
            a = alphas[start:start + batch_size].to(target, torch.float32)
            path = (x0 + a[:, None, None, None] * (x - x0)).requires_grad_(True)
            value = goal(_targets.run(encoders, path), encoders, reference)
            (grad,) = torch.autograd.grad(value.sum(), path)
            w = weights[start:start + batch_size].to(target)
            total += (grad.double() * w[:, None, None, None]).sum(dim=0, keepdim=True)
            values += value.detach().cpu().tolist()
        attribution = ((x - x0).double() * total)[0]
        _check_attribution(attribution, values, alphas, ids[index], goal)
        out[index] = attribution.cpu().numpy()
        scores[index] = values[-1], values[0]
    logger.info("saliency of %r for %d images, sub-%s: %s with %d steps", goal, len(arrays),
                subject, method, steps)
    side = out.shape[-1]
    return xr.DataArray(
        out, dims=("image", "rgb", "y", "x"), name="saliency",
        coords={"image": np.asarray(ids, dtype=object), "rgb": ["R", "G", "B"],
                "y": np.arange(side), "x": np.arange(side),
                "score": ("image", scores[:, 0].astype(np.float32)),
                "baseline_score": ("image", scores[:, 1].astype(np.float32))},
        attrs={"method": method, "steps": steps, "objective": repr(goal),
               "subject": str(subject),
               "baseline": baseline if isinstance(baseline, (str, float, int)) else "array",
               "units": "objective units per pixel and colour; they add up to score - "
                        "baseline_score"})


def _baseline(baseline: str | float | np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The baseline image, float32 ``shape`` (3, S, S): a name, a number or an array, each
    in the images' float scale [0, 1] (0 black, 1 white)."""
    if isinstance(baseline, str):
        if baseline not in BASELINES:
            raise InputError(f"baseline={baseline!r}; give one of {', '.join(BASELINES)}, "
                             f"{BASELINE_RULE}")
        return np.full(shape, BASELINES[baseline], dtype=np.float32)
    values = np.asarray(baseline)
    if values.dtype.kind not in "iuf":
        raise InputError(f"baseline={baseline!r} is not a number or an array of numbers; give "
                         f"{BASELINE_RULE}")
    if values.ndim and values.shape != tuple(shape):
        raise InputError(f"baseline array of shape {values.shape}; the images are "
                         f"{tuple(shape)} after the center crop: give {BASELINE_RULE}")
    bad = ~np.isfinite(values) | (values < 0) | (values > 1)
    if bad.any():
        what = (f"baseline={baseline!r} is" if not values.ndim else
                f"baseline array ({values.dtype}, from {float(values.min()):g} to "
                f"{float(values.max()):g}) has {int(bad.sum())} of {values.size} values")
        above = (np.isfinite(values) & (values > 1)).any()
        hint = " (a uint8 image: divide it by 255)" if above else ""
        raise InputError(f"{what} outside [0, 1] or not finite; give {BASELINE_RULE}{hint}")
    return np.broadcast_to(values.astype(np.float32), shape).copy()


def _memory(n: int, side: int, steps: int, batch_size: int, targets: int) -> int:
    """Bytes :func:`saliency` needs, roughly: a batch of path points (their copies and
    gradients, the encoders' activations), the attributions, the path's weights."""
    points = min(batch_size, steps + 1)
    pixels = 3 * side * side
    per_point = PATH_COPIES * pixels * 4 + targets * ENCODER_BYTES_PER_IMAGE
    return points * per_point + n * pixels * 5 + (steps + 1) * 48


def _check_attribution(attribution: Any, values: list[float], alphas: Any, image: str,
                       goal: Objective) -> None:
    """Refuse NaN or infinite attributions, naming the first path point where the objective
    was not finite (or the gradients, where it always was)."""
    bad = [i for i, v in enumerate(values) if not np.isfinite(v)]
    cause = (f"the objective {goal!r} returned {values[bad[0]]} on the path at alpha="
             f"{float(alphas[bad[0]]):g} (0: the baseline, 1: the image)" if bad else
             f"the gradients of {goal!r} (the objective itself stayed finite)")
    check_finite(attribution, f"the attributions of image {image!r}, from {cause},",
                 "check the objective's weights and the encoders' weights (`nest-data "
                 "verify` on their location)")
