"""Images optimised through the encoders: what *would* drive an ROI (needs torch)."""

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

__all__ = ["MAX_SIZE", "PARAMETRISATIONS", "RANGES", "dream"]

#: Image parametrisations :func:`dream` optimises.
PARAMETRISATIONS = ("fourier", "pixel")
#: The largest image side :func:`dream` makes (the encoders see 224 or 227 pixels).
MAX_SIZE = 4096
#: Copies of the image batch one step holds (parameters, gradients, Adam's two moments, the
#: parametrisation's and the transform's outputs kept for the backward pass).
IMAGE_COPIES = 16


@_config.progress_option
def dream(
    objective: str | Objective = "mean",
    *,
    subject: int | str | None = None,
    roi: str | None = None,
    modality: str = "fmri",
    train_dataset: str | None = None,
    n: int = 4,
    steps: int = 256,
    size: int = 227,
    lr: float = 0.05,
    seed: int = 0,
    parametrisation: str = "fourier",
    decorrelate: bool = True,
    jitter: float = 8,
    scale: tuple[float, float] = (0.95, 1.05),
    rotate: float = 5.0,
    location: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    backbone: str | os.PathLike[str] | None = None,
    device: str | None = None,
    show_progress: bool | None = None,
    catalog: Catalog | None = None,
    encoder: Encoder | Sequence[Encoder] | None = None,
) -> xr.DataTree:
    """Optimise a batch of images for an objective over one subject's encoders.

    Images are a decorrelated Fourier parametrisation (or plain pixels) behind a sigmoid;
    at every step each image is jittered, scaled and rotated at random (seeded), the
    encoders answer through their differentiable preprocessing, and Adam raises the
    objective.  Deterministic on the CPU for a given seed.

    Parameters
    ----------
    objective : "mean" or Objective
        ``"mean"``: the mean response of ``roi`` (or of the EEG model with
        ``modality="eeg"``).  Or any :class:`~nest_data.objectives.Objective`, e.g.
        ``objectives.contrast("FFA-1", "PPA")``, ``-objectives.roi_mean("V1")``,
        ``objectives.roi_mean("FFA-1") + 0.2 * objectives.diversity("FFA-1")``; it names
        its own ROIs (then leave ``roi`` out).
    subject : int or str
        The subject whose encoders answer (not with ``encoder=``, which fixes it).
    roi, modality, train_dataset : str, optional
        The encoder of ``objective="mean"`` (as in :func:`nest_data.encode`).
    n : int
        Images optimised together (one batch), at least 1.
    steps : int
        Optimisation steps, at least 1.
    size : int
        Side of the square images in pixels, 16 to 4096 (the fwRF model sees 227, the
        ViT-B/32 224).
    lr : float
        Adam's learning rate, 0 < lr <= 10.
    seed : int
        Seeds the initial images and every random transform (0 to 2**64 - 1).
    parametrisation : {"fourier", "pixel"}
    decorrelate : bool
        Optimise colours in a decorrelated colour space.
    jitter : float
        Largest random shift per step, in pixels, 0 to ``size``.
    scale : (float, float)
        Range ``(low, high)`` of the random zoom per step, 0 < low <= high <= 10.
    rotate : float
        Largest random rotation per step, in degrees, 0 to 180.
    location, storage_options, backbone
        Where the converted weights are, as in :func:`nest_data.encode`.
    device : str, optional
        ``"cpu"``, ``"cuda"`` or ``"auto"``; default the device of ``encoder``, else the CPU.
    show_progress : bool, optional
        Progress bar over steps.
    catalog : Catalog, optional
        The catalog that resolves the keys (default: the built-in one).
    encoder : Encoder or list of Encoder, optional
        Encoders loaded by :func:`nest_data.encoder`, used for the targets whose weights
        they hold (others are loaded from ``location``); one encoder with
        ``objective="mean"`` is the target itself.

    Returns
    -------
    xarray.DataTree
        The root holds ``images`` ``(image, rgb, y, x)`` float32 in [0, 1] (``rgb``, as in
        image arrays for ``generate``: ``channel`` is the EEG model's), ``score``
        ``(image)`` (the objective of the final images, untransformed) and ``objective``
        ``(step, image)`` (its value at every step, on that step's transformed images);
        its attrs record the objective and every parameter.  One child per target (``FFA-1``,
        ``PPA``, ``eeg``, ``fsaverage FFA-1``...) holds the final images' labelled
        ``responses``, as :func:`nest_data.encode` returns them.

    Raises
    ------
    InputError
        An argument outside its range (NaN and infinity never are in one), or a call whose
        estimated memory exceeds the device's (see ``NEST_DATA_MAX_MEMORY``).
    NonFiniteError
        The images or the objective became NaN or infinite at some step (the message names
        the step): nothing NaN is returned.

    Examples
    --------
    >>> import nest_data
    >>> tree = nest_data.dream(subject=1, roi="FFA-1", n=2, steps=3, size=64,
    ...                        location="demo", show_progress=False)
    >>> tree["images"].dims, tree["FFA-1"]["responses"].dims
    (('image', 'rgb', 'y', 'x'), ('image', 'voxel'))
    """
    import torch

    from nest_data._models import torch_device
    from nest_data.gradients import _targets
    from nest_data.gradients.parametrise import FourierImage, PixelImage, random_transform

    goal, subject, given, device = _targets.prepare(
        "dream()", objective, subject=subject, roi=roi, modality=modality,
        train_dataset=train_dataset, encoder=encoder, device=device)
    _check(n=n, steps=steps, size=size, lr=lr, seed=seed, parametrisation=parametrisation,
           jitter=jitter, scale=scale, rotate=rotate)
    target_device = torch_device(device)
    check_memory("dream()", _memory(n, steps, size, len(goal.targets)),
                 "lower n (images per call) or size, or set NEST_DATA_MAX_MEMORY",
                 target_device)
    encoders = _targets.load_targets(goal, subject=subject, location=location,
                                     storage_options=storage_options, backbone=backbone,
                                     catalog=catalog, device=target_device,
                                     given=given)
    generator = torch.Generator().manual_seed(int(seed))
    kind = FourierImage if parametrisation == "fourier" else PixelImage
    image = kind(n, size, generator=generator, decorrelate=decorrelate).to(target_device)
    optimiser = torch.optim.Adam(image.parameters(), lr=lr)
    with torch.no_grad():  # where the images start: what contrasts measure change from
        reference = _targets.run(encoders, image())
    trajectory = np.empty((steps, n), dtype=np.float32)
    for step in tqdm(range(steps), desc="dreaming", unit="step",
                     disable=not _config.show_progress()):
        optimiser.zero_grad()
        current = image()
        seen = random_transform(current, generator=generator, jitter=jitter, scale=scale,
                                rotate=rotate)
        value = goal(_targets.run(encoders, seen), encoders, reference)
        _check_step(current, value, goal, step, lr)
        (-value.sum()).backward()
        optimiser.step()
        trajectory[step] = value.detach().float().cpu().numpy()
    with torch.no_grad():
        final = image()
        responses = _targets.run(encoders, final)
        value = goal(responses, encoders, reference)
        _check_step(final, value, goal, steps, lr)
        score = value.float().cpu().numpy()
    ids = [f"dream-{i}" for i in range(n)]
    logger.info("dreamed %d images for %r, sub-%s, %d steps: objective %s", n, goal, subject,
                steps, np.round(score.astype(float), 4).tolist())
    attrs = {"objective": repr(goal), "subject": str(subject), "n": n, "steps": steps,
             "size": size, "lr": lr, "seed": seed, "parametrisation": parametrisation,
             "decorrelate": int(decorrelate), "jitter": jitter, "scale": [float(s) for s in scale],
             "rotate": rotate, "optimiser": "Adam", "device": str(target_device),
             "targets": [t.label for t in encoders]}
    root = xr.Dataset(
        {"images": (("image", "rgb", "y", "x"), final.float().cpu().numpy()),
         "score": ("image", score.astype(np.float32)),
         "objective": (("step", "image"), trajectory)},
        coords={"image": np.asarray(ids, dtype=object), "rgb": ["R", "G", "B"],
                "step": np.arange(steps)},
        attrs=attrs)
    children = {label: xr.Dataset({"responses": da})
                for label, da in _targets.labelled(encoders, responses, ids).items()}
    return xr.DataTree.from_dict({"/": root, **children})


#: Valid values of dream's numeric arguments.
RANGES = {
    "n": Range("images optimised together", 1, integer=True),
    "steps": Range("optimisation steps", 1, integer=True),
    "size": Range("pixels per side", 16, MAX_SIZE, integer=True),
    "lr": Range("Adam's learning rate", 0, 10, low_open=True),
    "seed": Range("a seed", 0, 2**64 - 1, integer=True),
    "rotate": Range("largest random rotation in degrees", 0, 180),
    "scale": Range("zoom factors (low, high)", 0, 10, low_open=True),
}


def _check(*, n: int, steps: int, size: int, lr: float, seed: int, parametrisation: str,
           jitter: float, scale: tuple[float, float], rotate: float) -> None:
    """Refuse parameters :func:`dream` cannot use, saying what is valid."""
    problems = [RANGES[name].problem(name, value) for name, value in
                (("n", n), ("steps", steps), ("size", size), ("lr", lr), ("seed", seed),
                 ("rotate", rotate))]
    side = size if RANGES["size"].contains(size) else MAX_SIZE
    problems.append(Range("largest random shift in pixels", 0, side).problem("jitter", jitter))
    if parametrisation not in PARAMETRISATIONS:
        problems.append(f"parametrisation={parametrisation!r} (one of "
                        f"{', '.join(PARAMETRISATIONS)})")
    zoom = RANGES["scale"]
    if (isinstance(scale, str) or not isinstance(scale, (Sequence, np.ndarray))
            or len(scale) != 2
            or not all(zoom.contains(s) for s in scale) or scale[0] > scale[1]):
        problems.append(f"scale={scale!r} ({zoom.what}: two finite numbers, "
                        f"{zoom.low:g} < low <= high <= {zoom.high:g})")
    refuse("dream()", problems)


def _check_step(images: Any, value: Any, goal: Objective, step: int, lr: float) -> None:
    """Stop at the first step whose images or objective are NaN or infinite, naming it."""
    check_finite(images, f"dream()'s images after {step} step(s) of Adam with lr={lr!r}",
                 "lower lr (Adam's steps overflowed the image parameters)")
    check_finite(value, f"the objective {goal!r} at step {step} (of finite images)",
                 "check the objective's terms and weights, and the encoders' weights "
                 "(`nest-data verify` on their location)")


def _memory(n: int, steps: int, size: int, targets: int) -> int:
    """Bytes :func:`dream` needs, roughly: the images' copies (parameters, Adam's state,
    the transforms and their gradients), the encoders' activations per image, and the
    trajectory."""
    per_image = IMAGE_COPIES * 3 * size * size * 4 + targets * ENCODER_BYTES_PER_IMAGE
    return n * per_image + steps * n * 4
