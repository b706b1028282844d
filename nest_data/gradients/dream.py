"""Images optimised through the encoders: what *would* drive an ROI (needs torch)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from nest_data import _config
from nest_data._catalog import Catalog
from nest_data.errors import InputError
from nest_data.gradients.objectives import Objective, as_objective

logger = logging.getLogger("nest_data")

__all__ = ["PARAMETRISATIONS", "dream"]

#: Image parametrisations :func:`dream` optimises.
PARAMETRISATIONS = ("fourier", "pixel")


@_config.progress_option
def dream(
    objective: str | Objective = "mean",
    *,
    subject: int | str,
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
    jitter: int = 8,
    scale: tuple[float, float] = (0.95, 1.05),
    rotate: float = 5.0,
    location: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    backbone: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    show_progress: bool | None = None,
    catalog: Catalog | None = None,
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
        The subject whose encoders answer.
    roi, modality, train_dataset : str, optional
        The encoder of ``objective="mean"`` (as in :func:`nest_data.encode`).
    n : int
        Images optimised together (one batch).
    steps : int
        Optimisation steps.
    size : int
        Side of the square images in pixels (the fwRF model sees 227, the ViT-B/32 224).
    lr : float
        Adam's learning rate.
    seed : int
        Seeds the initial images and every random transform.
    parametrisation : {"fourier", "pixel"}
    decorrelate : bool
        Optimise colours in a decorrelated colour space.
    jitter : int
        Largest random shift per step, in pixels.
    scale : (float, float)
        Range of the random scaling per step.
    rotate : float
        Largest random rotation per step, in degrees.
    location, storage_options, backbone
        Where the converted weights are, as in :func:`nest_data.encode`.
    device : str
        ``"cpu"``, ``"cuda"`` or ``"auto"``.
    show_progress : bool, optional
        Progress bar over steps.

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

    goal = as_objective(objective, roi, modality, train_dataset)
    _check(n=n, steps=steps, size=size, lr=lr, parametrisation=parametrisation, jitter=jitter,
           scale=scale, rotate=rotate)
    target_device = torch_device(device)
    encoders = _targets.load_targets(goal, subject=subject, location=location,
                                     storage_options=storage_options, backbone=backbone,
                                     catalog=catalog, device=target_device)
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
        seen = random_transform(image(), generator=generator, jitter=jitter, scale=scale,
                                rotate=rotate)
        value = goal(_targets.run(encoders, seen), encoders, reference)
        (-value.sum()).backward()
        optimiser.step()
        trajectory[step] = value.detach().float().cpu().numpy()
    with torch.no_grad():
        final = image()
        responses = _targets.run(encoders, final)
        score = goal(responses, encoders, reference).float().cpu().numpy()
    ids = [f"dream-{i}" for i in range(n)]
    logger.info("dreamed %d images for %r, sub-%s, %d steps: objective %s", n, goal, subject,
                steps, np.round(score.astype(float), 4).tolist())
    attrs = {"objective": repr(goal), "subject": str(subject), "n": n, "steps": steps,
             "size": size, "lr": lr, "seed": seed, "parametrisation": parametrisation,
             "decorrelate": int(decorrelate), "jitter": jitter, "scale": list(scale),
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


def _check(*, n: int, steps: int, size: int, lr: float, parametrisation: str, jitter: int,
           scale: tuple[float, float], rotate: float) -> None:
    """Refuse parameters :func:`dream` cannot use, saying what is valid."""
    problems = []
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        problems.append(f"n={n!r} (a positive number of images)")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        problems.append(f"steps={steps!r} (a positive number of steps)")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 16:
        problems.append(f"size={size!r} (pixels per side, at least 16)")
    if not lr > 0:
        problems.append(f"lr={lr!r} (a positive learning rate)")
    if parametrisation not in PARAMETRISATIONS:
        problems.append(f"parametrisation={parametrisation!r} (one of "
                        f"{', '.join(PARAMETRISATIONS)})")
    if jitter < 0 or rotate < 0:
        problems.append(f"jitter={jitter!r}, rotate={rotate!r} (not negative)")
    if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
        problems.append(f"scale={scale!r} (a range (low, high), 0 < low <= high)")
    if problems:
        raise InputError("dream() cannot use " + "; ".join(problems))
