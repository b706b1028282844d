"""Gradients with bad numbers: no crash, no bare error, no NaN out (issue 21, points 7-9).

NaN and infinity in the transforms used to kill the interpreter inside libtorch, so those
cases also run in a child process: a regression fails the test instead of killing pytest.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import nest_data  # noqa: E402
from nest_data import objectives as obj  # noqa: E402
from nest_data.errors import InputError, NonFiniteError  # noqa: E402
from nest_data.gradients import _targets  # noqa: E402
from nest_data.gradients._checks import MEMORY_LIMIT_ENV  # noqa: E402
from nest_data.synthetic import test_images  # noqa: E402

DREAM: dict[str, Any] = {"subject": 1, "roi": "FFA-1", "n": 1, "steps": 1, "size": 32,
                         "location": "demo"}
SALIENCY: dict[str, Any] = {"subject": 1, "roi": "V1", "steps": 2, "location": "demo"}

#: Run in a child process: each case must end in an InputError, never in a signal.
_CHILD = """
import torch
import nest_data
from nest_data.errors import InputError
from nest_data.gradients.parametrise import random_transform

kw = dict(subject=1, roi="FFA-1", n=1, steps=1, size=32, location="demo")
for case in ({"rotate": float("nan")}, {"rotate": float("inf")}, {"jitter": float("nan")}):
    try:
        nest_data.dream(**kw, **case)
    except InputError as exc:
        print("refused:", exc)
x = torch.rand(1, 3, 32, 32, requires_grad=True)
try:
    random_transform(x, generator=torch.Generator(), jitter=0, scale=(1, 1),
                     rotate=float("nan")).sum().backward()
except InputError as exc:
    print("refused:", exc)
"""


def test_nan_and_inf_transforms_are_refused_not_a_crash(demo: Path) -> None:
    done = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True,
                          env=os.environ.copy(), timeout=600)
    assert done.returncode == 0, f"exit code {done.returncode} (-11: SIGSEGV)\n{done.stderr}"
    lines = done.stdout.splitlines()
    assert lines == [
        "refused: dream() cannot use rotate=nan (largest random rotation in degrees: a finite "
        "number from 0 to 180); give values in the ranges shown",
        "refused: dream() cannot use rotate=inf (largest random rotation in degrees: a finite "
        "number from 0 to 180); give values in the ranges shown",
        "refused: dream() cannot use jitter=nan (largest random shift in pixels: a finite "
        "number from 0 to 32); give values in the ranges shown",
        "refused: random_transform(jitter=0, scale=(1, 1), rotate=nan) gives a NaN or "
        "infinite transform; give finite numbers, scale > 0 (nest_data.dream checks them "
        "first)",
    ]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"lr": float("inf")}, "lr=inf (Adam's learning rate: a finite number, 0 < lr <= 10)"),
    ({"lr": "fast"}, "lr='fast' (Adam's learning rate: a finite number, 0 < lr <= 10)"),
    ({"lr": 0}, "lr=0 (Adam's learning rate"),
    ({"scale": 5}, "scale=5 (zoom factors (low, high): two finite numbers, 0 < low <= high "
                   "<= 10)"),
    ({"scale": (1.0, float("nan"))}, "scale=(1.0, nan) (zoom factors"),
    ({"scale": (0, 1)}, "scale=(0, 1) (zoom factors"),
    ({"seed": "abc"}, "seed='abc' (a seed: an integer from 0 to 18446744073709551615)"),
    ({"seed": 1.5}, "seed=1.5 (a seed: an integer"),
    ({"size": 100000}, "size=100000 (pixels per side: an integer from 16 to 4096)"),
    ({"n": 1.0}, "n=1.0 (images optimised together: an integer >= 1)"),
    ({"steps": True}, "steps=True (optimisation steps: an integer >= 1)"),
    ({"rotate": -1}, "rotate=-1 (largest random rotation in degrees: a finite number from 0 "
                     "to 180)"),
    ({"jitter": 33}, "jitter=33 (largest random shift in pixels: a finite number from 0 to "
                     "32)"),
])
def test_dream_refuses_numbers_outside_their_range(demo: Path, kwargs: dict[str, Any],
                                                   message: str) -> None:
    with pytest.raises(InputError, match=r"^dream\(\) cannot use " + re.escape(message)):
        nest_data.dream(**{**DREAM, **kwargs})


def test_dream_takes_numpy_numbers_in_range(demo: Path) -> None:
    tree = nest_data.dream(**{**DREAM, "n": np.int64(2), "seed": np.uint64(7), "jitter": 2.5,
                              "scale": np.array([0.9, 1.1]), "rotate": np.float32(10)})
    assert tree["images"].shape == (2, 3, 32, 32) and np.isfinite(tree["images"]).all()
    assert tree.attrs["scale"] == [0.9, 1.1] and tree.attrs["jitter"] == 2.5


def test_dream_lists_every_bad_number_at_once(demo: Path) -> None:
    with pytest.raises(InputError, match=re.escape(
            "dream() cannot use lr=nan (Adam's learning rate: a finite number, 0 < lr <= 10); "
            "rotate=inf (largest random rotation in degrees: a finite number from 0 to 180); "
            "give values in the ranges shown")):
        nest_data.dream(**DREAM, lr=float("nan"), rotate=float("inf"))


def test_memory_is_estimated_before_anything_is_allocated(
        demo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "1GB")
    with pytest.raises(InputError, match=re.escape(
            "dream() needs about 32,197 GB of memory; NEST_DATA_MAX_MEMORY allows at most "
            "1 GB: lower n (images per call) or size, or set NEST_DATA_MAX_MEMORY")):
        nest_data.dream(**{**DREAM, "n": 10**6})
    with pytest.raises(InputError, match=re.escape(
            "dream() needs about 1.9 GB of memory; NEST_DATA_MAX_MEMORY allows at most 1 GB")):
        nest_data.dream(**{**DREAM, "n": 8, "size": 1024})
    images = test_images(1, 64)
    with pytest.raises(InputError, match=re.escape(
            "saliency() needs about 1.1 GB of memory; NEST_DATA_MAX_MEMORY allows at most "
            "1 GB: lower batch_size (path points per pass) or steps")):
        nest_data.saliency(images, **{**SALIENCY, "steps": 64, "batch_size": 33})
    with pytest.raises(InputError, match=re.escape(
            "dream() needs about 10^12 GB or more of memory")):  # an int beyond any float
        nest_data.dream(**{**DREAM, "n": 10**400})
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "lots")
    with pytest.raises(InputError, match="NEST_DATA_MAX_MEMORY='lots' is not a size; give a "
                                         "positive number of bytes with a unit, e.g. 8GB"):
        nest_data.dream(**DREAM)
    # without the cap, the machine's own memory bounds a call: a million images never fit
    monkeypatch.delenv(MEMORY_LIMIT_ENV)
    with pytest.raises(InputError, match=r"needs about 32,197 GB of memory; this machine has "
                                         r"[\d.,]+ GB of memory: lower n"):
        nest_data.dream(**{**DREAM, "n": 10**6})


def test_memory_on_a_cuda_device_is_its_free_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    from nest_data.gradients._checks import check_memory

    monkeypatch.setenv(MEMORY_LIMIT_ENV, "1TB")  # the device's own memory decides
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (2 * 10**9, 8 * 10**9))
    with pytest.raises(InputError, match=re.escape(
            "dream() needs about 3 GB of memory; cuda:0 has 2 GB free: lower n")):
        check_memory("dream()", 3 * 10**9, "lower n", torch.device("cuda", 0))
    check_memory("dream()", 10**9, "lower n", torch.device("cuda", 0))  # fits: no error


def _nan_after(monkeypatch: pytest.MonkeyPatch, calls: int) -> None:
    """The encoders answer NaN from their ``calls``-th run on (counting from 1)."""
    run = _targets.run
    seen = []

    def poisoned(encoders: Any, images: Any) -> Any:
        seen.append(1)
        out = run(encoders, images)
        return {t: v * float("nan") for t, v in out.items()} if len(seen) >= calls else out

    monkeypatch.setattr(_targets, "run", poisoned)


def test_dream_stops_at_the_step_whose_objective_is_nan(
        demo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _nan_after(monkeypatch, 3)  # 1: the start's reference, 2: step 0, 3: step 1
    with pytest.raises(NonFiniteError, match=re.escape(
            "the objective roi_mean('FFA-1') at step 1 (of finite images) holds 1 NaN or "
            "infinite value(s) of 1; nothing is returned. To fix: check the objective's terms "
            "and weights")):
        nest_data.dream(**{**DREAM, "steps": 3})
    assert issubclass(NonFiniteError, FloatingPointError)


def test_objective_weights_and_selections_are_finite() -> None:
    weights: list[Any] = [float("nan"), float("inf"), np.float32("nan")]
    for weight in weights:
        with pytest.raises(InputError, match=r"an Objective's weight cannot use weight=.*nan|"
                                             r"an Objective's weight cannot use weight=inf"):
            obj.roi_mean("V1") * weight
    with pytest.raises(TypeError):  # not a number: Python's own "unsupported operand"
        obj.roi_mean("V1") * "2"  # type: ignore[operator]
    assert repr(np.float64(0.5) * obj.roi_mean("V1")) == "0.5 * roi_mean('V1')"
    with pytest.raises(InputError, match=re.escape(
            "roi_mean() cannot use min_ncsnr=nan (an ncsnr threshold: a finite number)")):
        obj.roi_mean("V1", min_ncsnr=float("nan"))
    with pytest.raises(InputError, match=re.escape(
            "unit() cannot use index=-1 (the position of one voxel: an integer >= 0)")):
        obj.unit("V1", -1)
    with pytest.raises(InputError, match=r"times=\(nan, 0.2\): give a window"):
        obj.eeg(times=(float("nan"), 0.2))


def test_a_baseline_is_in_0_1_for_numbers_and_arrays_alike(demo: Path) -> None:
    images = test_images(1, 64)
    rule = re.escape("outside [0, 1] or not finite; give a baseline in the images' float "
                     "scale [0, 1] (0 black, 1 white)")
    for baseline, start in ((1.5, r"baseline=1\.5 is "), (float("nan"), "baseline=nan is "),
                            (np.full((3, 64, 64), np.nan), r"baseline array \(float64, from "
                             r"nan to nan\) has 12288 of 12288 values "),
                            (np.full((3, 64, 64), 200, np.uint8), r"baseline array \(uint8, "
                             r"from 200 to 200\) has 12288 of 12288 values ")):
        with pytest.raises(InputError, match="^" + start + rule):
            nest_data.saliency(images, **SALIENCY, baseline=baseline)
    with pytest.raises(InputError, match=r"\(a uint8 image: divide it by 255\)$"):
        nest_data.saliency(images, **SALIENCY, baseline=np.full((3, 64, 64), 200, np.uint8))
    grey = nest_data.saliency(images, **SALIENCY, baseline="grey")
    same_as_grey: list[Any] = [0.5, np.float32(0.5), np.full((3, 64, 64), 0.5)]
    for same in same_as_grey:
        again = nest_data.saliency(images, **SALIENCY, baseline=same)
        np.testing.assert_array_equal(again.values, grey.values)
        assert np.isfinite(again.values).all()


def test_saliency_refuses_no_images_and_bad_numbers(demo: Path) -> None:
    with pytest.raises(InputError, match=re.escape(
            "no images in images=[]; give at least one image")):
        nest_data.saliency([], **SALIENCY)
    images = test_images(1, 64)
    for kwargs, message in (({"steps": 1.5}, "steps=1.5 (intervals of the path integral: an "
                                             "integer >= 1)"),
                            ({"steps": float("nan")}, "steps=nan"),
                            ({"batch_size": 0}, "batch_size=0 (path points per forward "
                                                "pass: an integer >= 1)")):
        with pytest.raises(InputError, match=r"^saliency\(\) cannot use " + re.escape(message)):
            nest_data.saliency(images, **{**SALIENCY, **kwargs})


def test_saliency_names_where_the_objective_turned_nan(
        demo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _nan_after(monkeypatch, 3)  # 1: the baseline's reference, 2: path points 0-1, 3: point 2
    with pytest.raises(NonFiniteError, match=re.escape(
            "the attributions of image 'first', from the objective roi_mean('V1') returned "
            "nan on the path at alpha=1 (0: the baseline, 1: the image), holds")):
        nest_data.saliency(test_images(1, 64), **SALIENCY, batch_size=2, image_ids=["first"])
