"""Gradients through the encoders: the float path, dreams, objectives, saliency."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

torch = pytest.importorskip("torch")

import nest_data  # noqa: E402
from nest_data import objectives as obj  # noqa: E402
from nest_data._models import EncoderSource, LoadedEncoder  # noqa: E402
from nest_data.errors import InputError  # noqa: E402
from nest_data.gradients.parametrise import FourierImage  # noqa: E402
from nest_data.synthetic import test_images  # noqa: E402


def _encoder(roi: str | None = "V1", train_dataset: str | None = None) -> LoadedEncoder:
    return EncoderSource.resolve(subject=1, roi=roi, train_dataset=train_dataset,
                                 location="demo").load()


def _float(images: np.ndarray) -> Any:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [0, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0


# ------------------------------------------------------------------------- the float path


def test_float_path_is_the_encode_path_without_rounding(demo: Path) -> None:
    fwrf = _encoder("V1")
    at_227 = test_images(3, 227, seed=5)  # no resize: nothing to round
    expected = nest_data.encode(at_227, subject=1, roi="V1", location="demo", cache=False)
    with torch.no_grad():
        got = fwrf.float_responses(_float(at_227)).numpy()
    np.testing.assert_allclose(got, expected.values, rtol=1e-5, atol=1e-6)  # batching only
    for roi, train_dataset, size in (("V1", None, 300), (None, "nsd_fsaverage", 256)):
        images = test_images(4, size, seed=6)
        encoder = _encoder(roi, train_dataset)
        expected = nest_data.encode(images, subject=1, roi=roi, train_dataset=train_dataset,
                                    location="demo", cache=False).values
        with torch.no_grad():
            got = encoder.float_responses(_float(images)).numpy()
        spread = expected.std(axis=0).mean()  # across images, as BERG's own check
        assert np.abs(got - expected).max() < 0.02 * spread  # the uint8 rounding only


def _directional_check(model: Any, preprocess: Any, x: Any, select: Any) -> None:
    """grad . v against a central finite difference along v, in float64."""
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = x.clone().requires_grad_(True)
    value = select(model(preprocess(x)))
    (grad,) = torch.autograd.grad(value, x)
    eps = 1e-7  # ReLU and max-pool kinks: a wider step crosses some of them
    with torch.no_grad():
        plus = select(model(preprocess(x + eps * v)))
        minus = select(model(preprocess(x - eps * v)))
    numeric = float((plus - minus) / (2 * eps))
    analytic = float((grad * v).sum())
    assert abs(numeric) > 0
    assert analytic == pytest.approx(numeric, rel=1e-3)


def test_gradients_match_finite_differences(demo: Path) -> None:
    fwrf = _encoder("FFA-1")
    model = copy.deepcopy(fwrf.model).double()
    x = _float(test_images(1, 64, seed=7)).double()  # resized to 227 on the float path
    _directional_check(model, fwrf.preprocess_float, x, lambda r: r[0, :50].mean())
    surface = _encoder(None, "nsd_fsaverage")
    model = copy.deepcopy(surface.model).double()
    x = _float(test_images(1, 240, seed=8)).double()
    vertices = torch.as_tensor(np.sort(surface.rois["FFA-1"]))
    _directional_check(model, surface.preprocess_float, x, lambda r: r[0, vertices].mean())


# ------------------------------------------------------------------------- dreams


def _image_set_scores(roi: str) -> xr.DataArray:
    """Responses of the demo's image set (the images its fsaverage store was made from)."""
    from nest_data._demo import DEMO_IMAGES, DEMO_SEED

    images = test_images(DEMO_IMAGES, 256, seed=DEMO_SEED)
    return nest_data.encode(images, subject=1, roi=roi, location="demo", image_ids=[
        f"things-{i}" for i in range(DEMO_IMAGES)])


def test_dreams_drive_the_roi_above_every_stored_image(demo: Path) -> None:
    tree = nest_data.dream(subject=1, roi="FFA-1", n=2, steps=40, seed=0, location="demo")
    stored = _image_set_scores("FFA-1")
    best = float(stored.mean("voxel").max())
    score = tree["score"].values
    assert (score > best).all() and score.min() / best > 2.0
    dreamed = tree["FFA-1"].to_dataset()["responses"]
    np.testing.assert_allclose(dreamed.mean("voxel").values, score, rtol=1e-5)
    # the objective rose over the steps, and top_images ranks the dreams first
    trajectory = tree["objective"].values
    assert trajectory.shape == (40, 2) and trajectory[-5:].mean() > 2 * trajectory[:5].mean()
    both = xr.concat([stored, dreamed], dim="image")
    top = nest_data.top_images(both, k=2)
    assert sorted(top.image.values.tolist()) == ["dream-0", "dream-1"]
    images = tree["images"]
    assert images.dims == ("image", "rgb", "y", "x") and images.shape == (2, 3, 227, 227)
    assert 0 <= float(images.min()) and float(images.max()) <= 1
    for name in ("steps", "lr", "seed", "jitter", "scale", "rotate", "parametrisation"):
        assert name in tree.attrs
    assert tree.attrs["objective"] == "roi_mean('FFA-1')"


def test_dreams_are_deterministic_for_a_seed(demo: Path) -> None:
    kw = {"subject": 1, "roi": "V1", "n": 2, "steps": 4, "size": 64, "location": "demo"}
    first, again = nest_data.dream(seed=3, **kw), nest_data.dream(seed=3, **kw)
    np.testing.assert_array_equal(first["images"].values, again["images"].values)
    np.testing.assert_array_equal(first["objective"].values, again["objective"].values)
    other = nest_data.dream(seed=4, **kw)
    assert not np.array_equal(first["images"].values, other["images"].values)
    pixels = nest_data.dream(seed=3, parametrisation="pixel", decorrelate=False, **kw)
    assert not np.array_equal(first["images"].values, pixels["images"].values)


def test_contrast_moves_two_rois_in_opposite_directions(demo: Path) -> None:
    goal = obj.contrast("FFA-1", "PPA")
    tree = nest_data.dream(goal, subject=1, n=2, steps=60, lr=0.08, seed=0, location="demo")
    assert set(tree.children) == {"FFA-1", "PPA"}
    start = FourierImage(2, 227, generator=torch.Generator().manual_seed(0))  # dream's start
    with torch.no_grad():
        before = {roi: _encoder(roi).float_responses(start()).mean(dim=1).numpy()
                  for roi in ("FFA-1", "PPA")}
    after = {roi: tree[roi].to_dataset()["responses"].mean("voxel").values
             for roi in ("FFA-1", "PPA")}
    assert (after["FFA-1"] > before["FFA-1"]).all()
    assert (after["PPA"] < before["PPA"]).all()
    assert (tree["score"].values > 0).all()  # the smaller of the two changes, in spreads


def test_minimising_and_surface_rois(demo: Path) -> None:
    low = nest_data.dream(-obj.roi_mean("V1"), subject=1, n=1, steps=15, size=96,
                          location="demo")
    high = nest_data.dream(subject=1, roi="V1", n=1, steps=15, size=96, location="demo")
    assert float(low["V1"].to_dataset()["responses"].mean()) < float(
        high["V1"].to_dataset()["responses"].mean())
    surface = nest_data.dream(obj.roi_mean("FFA-1", train_dataset="nsd_fsaverage"), subject=1,
                              n=1, steps=2, size=64, location="demo")
    responses = surface["fsaverage FFA-1"].to_dataset()["responses"]
    assert responses.dims == ("image", "vertex")
    assert responses.sizes["vertex"] == len(_encoder(None, "nsd_fsaverage").rois["FFA-1"])


def test_dream_refuses_what_it_cannot_use(demo: Path) -> None:
    cases = [
        ({"n": 0}, "n=0 (images optimised together: an integer >= 1)"),
        ({"steps": -1}, "steps=-1"),
        ({"size": 8}, "size=8 (pixels per side: an integer from 16 to 4096)"),
        ({"parametrisation": "wavelet"}, "parametrisation='wavelet' (one of fourier, pixel)"),
        ({"scale": (1.2, 0.8)}, "scale=(1.2, 0.8)"),
        ({"objective": "max"}, "objective='max'; give 'mean'"),
        ({"objective": obj.roi_mean("V1")}, "roi='V1' given with an Objective"),
    ]
    for kwargs, message in cases:
        with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
            nest_data.dream(**{"subject": 1, "roi": "V1", "location": "demo", **kwargs})
    with pytest.raises(InputError, match="an fMRI objective needs roi="):
        nest_data.dream(subject=1, location="demo")


def test_eeg_dreams_through_the_vit(demo: Path, tmp_path: Path) -> None:
    """The EEG model's float path is its encode path, and a channel/time window can rise."""
    from nest_data.converters.weights import convert_weights
    from nest_data.synthetic import write_eeg_weights

    write_eeg_weights(tmp_path / "src", 1, n_components=8)
    convert_weights(tmp_path / "src", tmp_path / "weights")
    keys = {"subject": 1, "location": str(tmp_path / "weights"),
            "backbone": demo / "weights" / "backbones" / "vit_b_32-imagenet1k_v1"}
    images = test_images(2, 256, seed=11)
    expected = nest_data.encode(images, modality="eeg", cache=False, **keys).values
    encoder = EncoderSource.resolve(modality="eeg", **keys).load()
    with torch.no_grad():
        got = encoder.float_responses(_float(images)).numpy()
    assert np.abs(got - expected).max() < 0.02 * expected.std(axis=0).mean()
    goal = obj.eeg(["O1", "Oz", "O2"], times=(0.1, 0.2))
    tree = nest_data.dream(goal, n=1, steps=8, size=64, lr=0.1, **keys)
    assert tree["eeg"]["responses"].dims == ("image", "repetition", "channel", "time")
    window = tree["eeg"].to_dataset()["responses"].sel(channel=["O1", "Oz", "O2"]).sel(
        time=slice(0.1, 0.2))
    np.testing.assert_allclose(float(window.mean()), float(tree["score"][0]), rtol=1e-4)
    assert tree["objective"].values[-1, 0] > tree["objective"].values[0, 0]


# ------------------------------------------------------------------------- objectives


class _FakeEncoder:
    """The labels an objective reads, without a model."""

    def __init__(self) -> None:
        self.dims = ("image", "repetition", "channel", "time")
        self.coords = {"channel": (("channel",), np.array(["O1", "Oz", "O2", "Cz"])),
                       "time": (("time",), np.round(np.arange(6) * 0.05, 3))}
        self.rois: dict[str, np.ndarray] = {}


class _FakeVoxels:
    def __init__(self) -> None:
        self.dims = ("image", "voxel")
        self.coords = {"ncsnr": (("voxel",), np.array([0.1, 0.9, 0.6, 0.2]))}
        self.rois: dict[str, np.ndarray] = {}


def _score(goal: Any, values: Any, encoder: Any) -> Any:
    """An objective of one target on given responses (also the reference)."""
    (target,) = goal.targets
    return goal({target: values}, {target: encoder}, {target: values})


def test_objectives_select_what_they_say() -> None:
    values = torch.arange(2 * 4, dtype=torch.float64).reshape(2, 4)
    fake: Any = _FakeVoxels()
    reliable = obj.roi_mean("V1", min_ncsnr=0.5)
    np.testing.assert_allclose(_score(reliable, values, fake).numpy(),
                               values[:, [1, 2]].mean(dim=1).numpy())
    one = obj.unit("V1", 3)
    np.testing.assert_allclose(_score(one, values, fake).numpy(), [3.0, 7.0])
    goal = 2 * obj.roi_mean("V1") - obj.unit("V1", 0)
    np.testing.assert_allclose(_score(goal, values, fake).numpy(),
                               2 * values.mean(dim=1).numpy() - values[:, 0].numpy())
    assert repr(goal) == "2 * roi_mean('V1') - unit('V1', 0)"
    with pytest.raises(InputError, match="unit 9 of V1, which has 4 units"):
        _score(obj.unit("V1", 9), values, fake)
    with pytest.raises(InputError, match="asks for the label 'r2'; labels: ncsnr"):
        _score(obj.voxels("V1", lambda labels: labels["r2"] > 0), values, fake)
    with pytest.raises(InputError, match="selects 0 units of 4"):
        _score(obj.roi_mean("V1", min_ncsnr=5.0), values, fake)


def test_contrast_is_the_smaller_change_in_spreads() -> None:
    fake: Any = _FakeVoxels()
    goal = obj.contrast("FFA-1", "PPA")
    up, down = goal.targets
    reference = torch.tensor([[0.0, 1.0, 2.0, 3.0], [0.0, 2.0, 4.0, 6.0]], dtype=torch.float64)
    now = {up: reference + torch.tensor([[2.0], [1.0]]), down: reference - 0.5}
    got = goal(now, {up: fake, down: fake}, {up: reference, down: reference}).numpy()
    spread = reference.std(dim=1).numpy()
    np.testing.assert_allclose(got, [0.5 / spread[0], 0.5 / spread[1]])
    now[down] = reference + 0.1  # the lower ROI rose: no disentangling, a negative score
    got = goal(now, {up: fake, down: fake}, {up: reference, down: reference}).numpy()
    assert (got < 0).all()


def test_eeg_objective_takes_channels_and_a_window() -> None:
    values = torch.randn(2, 4, 4, 6, generator=torch.Generator().manual_seed(0),
                         dtype=torch.float64)
    fake: Any = _FakeEncoder()
    goal = obj.eeg(["O1", "O2"], times=(0.05, 0.15))
    target = goal.targets[0]
    assert target.label == "eeg"
    expected = values[:, :, [0, 2]][:, :, :, [1, 2, 3]].reshape(2, -1).mean(dim=1)
    np.testing.assert_allclose(_score(goal, values, fake).numpy(), expected.numpy())
    with pytest.raises(InputError, match=r"unknown channel\(s\) \['Pz'\]; valid: O1, Oz"):
        _score(obj.eeg("Pz"), values, fake)
    with pytest.raises(InputError, match="holds none of the model's time points"):
        _score(obj.eeg(times=(1.0, 2.0)), values, fake)
    with pytest.raises(InputError, match="give a window"):
        obj.eeg(times=(0.2, 0.1))


def test_diversity_rewards_different_patterns() -> None:
    fake: Any = _FakeVoxels()
    goal = obj.diversity("V1")
    same = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 1.0]])
    apart = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    assert float(_score(goal, apart, fake).mean()) > float(
        _score(goal, same, fake).mean())
    assert _score(goal, same[:1], fake).tolist() == [0.0]


# ------------------------------------------------------------------------- saliency


def test_saliency_is_complete_and_points_at_the_pixels(demo: Path) -> None:
    images = test_images(2, 227, seed=9)
    maps = nest_data.saliency(images, subject=1, roi="FFA-1", steps=32, location="demo")
    assert maps.dims == ("image", "rgb", "y", "x") and maps.shape == (2, 3, 227, 227)
    expected = nest_data.encode(images, subject=1, roi="FFA-1", location="demo", cache=False)
    np.testing.assert_allclose(maps.score.values, expected.mean("voxel").values, rtol=1e-4)
    difference = (maps.score - maps.baseline_score).values
    total = maps.sum(("rgb", "y", "x")).values
    np.testing.assert_allclose(total, difference, rtol=0.02)  # completeness
    # deletion: blanking (to the black baseline) the tenth of the pixels with the largest
    # positive attributions lowers the score more than a random tenth, and blanking those
    # with the most negative ones raises it above that
    for index in range(2):
        per_pixel = maps.sum("rgb").values[index].ravel()
        tenth = per_pixel.size // 10
        order = np.argsort(per_pixel)
        change = []
        for pixels in (order[-tenth:], np.random.default_rng(0).choice(
                per_pixel.size, tenth, replace=False), order[:tenth]):
            blanked = images[index:index + 1].copy().reshape(1, -1, 3)
            blanked[0, pixels] = 0
            again = nest_data.encode(blanked.reshape(1, 227, 227, 3), subject=1, roi="FFA-1",
                                     location="demo", cache=False)
            change.append(float(again.mean()) - float(maps.score[index]))
        assert change[0] < 0 and change[0] < change[1] < change[2]
    grey = nest_data.saliency(images[:1], subject=1, roi="FFA-1", steps=16, baseline="grey",
                              location="demo")
    assert grey.attrs["baseline"] == "grey"
    np.testing.assert_allclose(float(grey.sum()), float(grey.score[0] - grey.baseline_score[0]),
                               rtol=0.03)


def test_saliency_refuses_bad_input(demo: Path) -> None:
    images = test_images(1, 64)
    kw = {"subject": 1, "roi": "V1", "location": "demo"}
    for extra, message in (({"method": "occlusion"}, "method='occlusion'; valid: "
                            "integrated_gradients"), ({"steps": 0}, "steps=0"),
                           ({"baseline": "blue"}, "baseline='blue'; give one of black, grey"),
                           ({"baseline": 2.0}, r"baseline=2.0 is outside \[0, 1\] or not "
                            "finite; give a baseline in the images' float scale"),
                           ({"baseline": np.zeros((3, 8, 8))}, r"baseline array of shape "
                            r"\(3, 8, 8\); the images are \(3, 64, 64\)")):
        with pytest.raises(InputError, match=message):
            nest_data.saliency(images, **kw, **extra)
    with pytest.raises(InputError, match="images of several sizes"):
        nest_data.saliency([test_images(1, 64)[0], test_images(1, 80)[0]], **kw)
