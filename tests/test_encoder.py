"""The encoder object: loaded once, many batches, a model card, metadata, devices, freeing;
accepted by encode, generate, dream and saliency."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

torch = pytest.importorskip("torch")

import nest_data  # noqa: E402
from nest_data import _models  # noqa: E402
from nest_data.errors import EncoderFreedError, InputError  # noqa: E402
from nest_data.synthetic import test_images, write_image_folder  # noqa: E402


def _count_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every time weights are read into a model (after forgetting loaded ones)."""
    _models.clear_loaded()
    loads: list[str] = []
    real = _models._load

    def load(source: _models.EncoderSource) -> _models.LoadedEncoder:
        loads.append(source.path)
        return real(source)

    monkeypatch.setattr(_models, "_load", load)
    return loads


def test_an_encoder_loads_once_and_encodes_many_batches(fwrf_weights: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    loads = _count_loads(monkeypatch)
    images = test_images(5, 64, seed=3)
    with nest_data.encoder(subject=1, roi="V1", location=str(fwrf_weights),
                           device="cpu") as v1:
        first = v1.encode(images[:2], cache=False)
        second = v1(images[2:], cache=False)  # calling it is encode
        by_keys = nest_data.encode(images, subject=1, roi="V1", location=str(fwrf_weights),
                                   cache=False)  # the same weights: nothing read again
        through = nest_data.encode(images, encoder=v1, cache=False)
    assert loads == ["weights/modality-fmri/train_dataset-nsd/model-fwrf/sub-01_roi-V1"]
    np.testing.assert_array_equal(np.concatenate([first.values, second.values]),
                                  by_keys.values)
    xr.testing.assert_identical(through, by_keys)
    assert first.dims == ("image", "voxel") and first.sizes["voxel"] == 12
    assert first.attrs["roi"] == "V1" and "weights_sha256" in first.attrs


def test_the_model_card_and_metadata_say_what_the_encoder_is(fwrf_weights: Path) -> None:
    with nest_data.encoder(subject=1, roi="v1", location=str(fwrf_weights),
                           device="cpu") as v1:  # keys match case-insensitively
        card = v1.describe().splitlines()
        meta = v1.get_metadata()
        encoded = v1.encode(test_images(1, 64), cache=False)
        sha = encoded.attrs["weights_sha256"]
        assert repr(v1) == ("<nest_data.Encoder fmri/nsd/fwrf sub-01 V1: (image, voxel) 12 "
                            "voxels on cpu>")
        assert v1.keys == {"modality": "fmri", "train_dataset": "nsd", "model": "fwrf",
                           "subject": 1, "roi": "V1"}
        assert v1.sizes == {"voxel": 12} and v1.device == "cpu" and v1.roi == "V1"
        model = v1.loaded.model
        tensors = [*model.parameters(), *model.buffers()]
        assert v1.n_parameters == sum(t.numel() for t in tensors) > 1000
        assert v1.nbytes == sum(t.nbytes for t in tensors)
    assert card[0] == "NEST encoder fmri/nsd/fwrf, subject 1, ROI V1"
    assert "output: (image, voxel), 12 voxels per image, float32 (" in "\n".join(card)
    weights = next(line for line in card if line.startswith("weights: "))
    assert weights.endswith(f"sub-01_roi-V1 ({sha})")
    assert card[-2:-1] == ["device: cpu"] and any("resized to 227" in line for line in card)
    # the metadata are the labels of every encoded array, without encoding
    assert set(meta.coords) == set(encoded.coords) - {"image", "image_sha256"}
    for name in meta.coords:
        np.testing.assert_array_equal(meta[name].values, encoded[name].values)
    assert meta.attrs == encoded.attrs and meta.sizes == {"voxel": 12}


def test_a_selection_is_kept_by_the_encoder_as_berg_does(demo: Path) -> None:
    images = test_images(2, 64, seed=4)
    channels = ["Oz", "Pz"]
    with nest_data.encoder(modality="eeg", subject=1, channels=channels,
                           timepoints=np.arange(10, 20), location="demo") as eeg:
        got = eeg.encode(images, cache=False)
        meta = eeg.get_metadata()
        card = eeg.describe()
        assert "selection: 2 of 63 channels; 10 of 140 time points" in card
        assert "4 repetitions, 2 channels, 10 time points per image" in card
    expected = nest_data.encode(images, modality="eeg", subject=1, channels=channels,
                                timepoints=np.arange(10, 20), location="demo", cache=False)
    xr.testing.assert_identical(got, expected)
    assert list(meta.channel.values) == channels and meta.sizes["time"] == 10
    with nest_data.encoder(train_dataset="nsd_fsaverage", subject=1, roi="FFA-1",
                           location="demo") as ffa:
        surface = ffa.encode(images, cache=False)
        assert ffa.get_metadata().sizes["vertex"] == surface.sizes["vertex"]
        assert ffa.roi == "FFA-1" and surface.attrs["roi"] == "FFA-1"
        assert repr(ffa).endswith(f"(image, vertex) {surface.sizes['vertex']} vertices on cpu>")
    np.testing.assert_array_equal(surface.values, nest_data.encode(
        images, train_dataset="nsd_fsaverage", subject=1, roi="FFA-1", location="demo",
        cache=False).values)


def test_freeing_lets_the_memory_go_and_a_freed_encoder_says_so(
        fwrf_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loads = _count_loads(monkeypatch)
    with nest_data.encoder(subject=1, roi="V1", location=str(fwrf_weights)) as v1:
        model = weakref.ref(v1.loaded.model)
    gc.collect()
    assert model() is None  # nothing keeps the weights once the block ends
    assert repr(v1) == "<nest_data.Encoder fmri/nsd/fwrf sub-01 V1 (freed)>"
    for use in (lambda: v1.encode(test_images(1, 32)), v1.describe, v1.get_metadata,
                lambda: v1.to("cpu"),
                lambda: nest_data.encode(test_images(1, 32), encoder=v1)):
        with pytest.raises(EncoderFreedError, match=r"this encoder \(fmri/nsd/fwrf sub-01 "
                                                    r"V1\) was freed.*nest_data.encoder"):
            use()
    v1.free()  # twice: harmless
    assert isinstance(EncoderFreedError("x"), RuntimeError)
    nest_data.encoder(subject=1, roi="V1", location=str(fwrf_weights)).free()
    assert len(loads) == 2  # loading again after freeing reads the weights again


def test_devices_are_checked_and_moves_keep_the_values(fwrf_weights: Path) -> None:
    images = test_images(2, 64, seed=8)
    with nest_data.encoder(subject=1, roi="V1", location=str(fwrf_weights)) as v1:
        before = v1.encode(images, cache=False).values
        assert v1.to("cpu") is v1 and v1.device == "cpu"
        np.testing.assert_array_equal(v1.encode(images, cache=False).values, before)
        if not torch.cuda.is_available():
            with pytest.raises(InputError, match="torch sees no CUDA device here"):
                v1.to("cuda")
            assert v1.device == "cpu"  # a refused move leaves the encoder where it was
        with pytest.raises(InputError, match="unknown device 'tpu'"):
            v1.to("tpu")


def test_keys_given_with_an_encoder_are_refused(fwrf_weights: Path) -> None:
    with nest_data.encoder(subject=1, roi="V1", location=str(fwrf_weights)) as v1:
        with pytest.raises(InputError, match=r"encode\(\): encoder= is given, and so are "
                                             r"device, roi, subject: the encoder already"):
            nest_data.encode(test_images(1, 32), encoder=v1, subject=1, roi="V1",
                             device="cpu")
        with pytest.raises(InputError, match=r"dream\(\): the encoders given are of "
                                             r"subject\(s\) \[1\] and subject=2 is given"):
            nest_data.dream(encoder=v1, subject=2, n=1, steps=1, size=32)
        with pytest.raises(InputError, match=r"dream\(\): encoder= takes an encoder"):
            nest_data.dream(encoder=["V1"], n=1, steps=1, size=32)  # type: ignore[list-item]
    with pytest.raises(InputError, match=r"give subject= \(with roi=, modality=\.\.\. as "
                                         r"needed\) or encoder="):
        nest_data.encode(test_images(1, 32))
    with pytest.raises(InputError, match=r"saliency\(\): give subject= .* or encoder="):
        nest_data.saliency(test_images(1, 32))
    with nest_data.encoder(modality="eeg", subject=1, channels=["Oz"],
                           location="demo") as eeg, pytest.raises(
            InputError, match=r"dream\(\) reads an encoder's ROI, but this encoder .* keeps a "
                              r"selection of 1 channel; load it without"):
        nest_data.dream(encoder=eeg, n=1, steps=1, size=32)


def test_dream_and_saliency_take_encoders(demo: Path) -> None:
    params = {"n": 1, "steps": 2, "size": 48, "show_progress": False}
    with nest_data.encoder(subject=1, roi="FFA-1", location="demo") as ffa, \
            nest_data.encoder(subject=1, roi="PPA", location="demo") as ppa:
        by_keys = nest_data.dream(subject=1, roi="FFA-1", location="demo", **params)
        given = nest_data.dream(encoder=ffa, **params)  # objective "mean" of its ROI
        xr.testing.assert_identical(given, by_keys)
        contrast = nest_data.dream(nest_data.objectives.contrast("FFA-1", "PPA"),
                                   encoder=[ffa, ppa], **params)
        assert contrast.attrs["targets"] == ["FFA-1", "PPA"] and contrast.attrs["device"] == "cpu"
        with pytest.raises(InputError, match="objective='mean' with 2 encoders; name the ROI"):
            nest_data.dream(encoder=[ffa, ppa], **params)
        image = test_images(1, 48, seed=2)
        maps = nest_data.saliency(image, encoder=ffa, steps=4, show_progress=False)
        expected = nest_data.saliency(image, subject=1, roi="FFA-1", steps=4,
                                      location="demo", show_progress=False)
    xr.testing.assert_identical(maps, expected)


def test_saliency_labels_images_given_by_path_with_their_file_names(
        fwrf_weights: Path, tmp_path: Path) -> None:
    paths = write_image_folder(tmp_path / "images", test_images(2, 32, seed=1))
    maps = nest_data.saliency([str(p) for p in paths], subject=1, roi="V1", steps=2,
                              location=str(fwrf_weights), show_progress=False)
    assert list(maps.image.values) == [p.name for p in paths]


def test_generate_takes_an_encoder(fwrf_weights: Path, tmp_path: Path) -> None:
    folder = tmp_path / "images"
    write_image_folder(folder, test_images(5, 48, seed=9))
    with nest_data.encoder(subject=1, roi="V1", location=str(fwrf_weights)) as v1:
        url = nest_data.generate(folder, tmp_path / "out", imageset="mine", encoder=v1,
                                 chunk_images=2, show_progress=False)
        stored = nest_data.open_store(url).load()
        expected = v1.encode(sorted(folder.iterdir()), cache=False)
        with pytest.raises(InputError, match=r"generate\(\): encoder= is given, and so are "
                                             "subject"):
            nest_data.generate(folder, tmp_path / "other", imageset="mine", encoder=v1,
                               subject=1)
    np.testing.assert_array_equal(stored.values, expected.values)
    assert list(stored.image_id.values) == list(expected.image.values)
    with nest_data.encoder(train_dataset="nsd_fsaverage", subject=1, roi="FFA-1",
                           location="demo") as ffa, pytest.raises(
            InputError, match="generate writes the whole surface, and this encoder keeps the "
                              "ROI 'FFA-1'; load it without roi="):
        nest_data.generate(folder, tmp_path / "surface", imageset="mine", encoder=ffa)
