"""The EEG encoder end to end: NEST's original files -> converters -> encode, vs a reference.

The reference (NumPy, float64) is written from the spec: ImageNet preprocessing on images
whose shorter side is already 256 (so the resize is the identity and only the crop and
normalisation apply), ViT-B/32 block outputs (``test_vit.reference_features``), then
scaler -> PCA -> one regression per repetition.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import nest_data  # noqa: E402
from nest_data.converters import convert_ned  # noqa: E402
from nest_data.converters.weights import convert_eeg_weights, convert_weights  # noqa: E402
from nest_data.errors import SourceFormatError  # noqa: E402
from nest_data.synthetic import (  # noqa: E402
    CHANNELS,
    TIMES,
    VIT_B_32_FILE,
    eeg_head_arrays,
    eeg_weight_paths,
    test_images,
    vit_b_32_state_dict,
    write_eeg_weights,
    write_ned,
    write_vit_b_32,
)

from .test_vit import reference_features  # noqa: E402

N_COMPONENTS = 8
MEAN = np.array([0.485, 0.456, 0.406])[None, :, None, None]
STD = np.array([0.229, 0.224, 0.225])[None, :, None, None]


def reference_preprocess(images: np.ndarray) -> np.ndarray:
    """(B, 256, 256, 3) uint8 -> center 224 crop, /255, ImageNet normalisation (float64)."""
    x = images.transpose(0, 3, 1, 2)[:, :, 16:240, 16:240] / 255.0
    return (x - MEAN) / STD


def reference_eeg(images: np.ndarray, sd: dict[str, np.ndarray], head: dict[str, Any],
                  n_components: int = N_COMPONENTS) -> np.ndarray:
    f = reference_features(reference_preprocess(images), sd)
    z = (f - head["scaler_param"]["mean_"]) / head["scaler_param"]["scale_"]
    p = (z - head["pca_param"]["mean_"]) @ head["pca_param"]["components_"][:n_components].T
    reps = [p @ head["reg_param"][f"rep-{r}"]["coef_"].T + head["reg_param"][f"rep-{r}"][
        "intercept_"] for r in range(1, 5)]
    return np.stack(reps, axis=1).reshape(len(images), 4, 63, 140)


@pytest.fixture(scope="module")
def eeg_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Converted weights: subject 1 from BERG's layout, subject 2 from NED's, the backbone."""
    src = tmp_path_factory.mktemp("nest-eeg")
    dest = tmp_path_factory.mktemp("converted-eeg")
    write_eeg_weights(src, 1, layout="berg", n_components=N_COMPONENTS)
    write_eeg_weights(src, 2, layout="ned", n_components=N_COMPONENTS)
    pth = write_vit_b_32(src / VIT_B_32_FILE)
    written = convert_weights(src, dest, vit_b_32=pth)
    assert written == ["weights/backbones/vit_b_32-imagenet1k_v1",
                       "weights/modality-eeg/train_dataset-things_eeg_2/model-vit_b_32/sub-01",
                       "weights/modality-eeg/train_dataset-things_eeg_2/model-vit_b_32/sub-02"]
    pth.unlink()  # the encoder must not need torchvision's pickle any more
    return dest


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return test_images(3, 256, seed=5)


@pytest.fixture(scope="module")
def expected(images: np.ndarray) -> dict[int, np.ndarray]:
    sd = {k: v.astype(np.float64) for k, v in vit_b_32_state_dict().items()}
    return {s: reference_eeg(images, sd, eeg_head_arrays(s, n_components=N_COMPONENTS))
            for s in (1, 2)}


def test_berg_and_ned_layouts_match_reference_without_pickles(
    eeg_root: Path, images: np.ndarray, expected: dict[int, np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a pickle was loaded while encoding")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)
    for subject in (1, 2):
        da = nest_data.encode(images, subject=subject, modality="eeg", location=str(eeg_root),
                              cache=False, batch_size=2)
        assert da.dims == ("image", "repetition", "channel", "time")
        assert da.shape == (3, 4, 63, 140) and da.dtype == np.float32
        np.testing.assert_allclose(da.values, expected[subject], rtol=1e-3, atol=2e-3)
        assert expected[subject].std() > 0.5  # the comparison is not between near-zeros
    assert list(da.channel.values) == list(CHANNELS)
    np.testing.assert_allclose(da.time.values, TIMES)
    assert da.correlation_single_repetitions.dims == ("repetition", "channel", "time")
    assert da.attrs["modality"] == "eeg" and da.attrs["subject"] == 2

    one = nest_data.encode(images[:1], subject=1, modality="eeg", location=str(eeg_root),
                           cache=False)
    assert one.shape == (1, 4, 63, 140)  # never squeezed (BERG squeezes a single image)
    np.testing.assert_allclose(one.values, expected[1][:1], rtol=1e-3, atol=2e-3)


def test_selection_of_channels_and_timepoints(eeg_root: Path, images: np.ndarray) -> None:
    full = nest_data.encode(images[:2], subject=1, modality="eeg", location=str(eeg_root))
    mask = np.zeros(140, dtype=bool)
    mask[[20, 40, 41]] = True
    sel = nest_data.encode(images[:2], subject=1, modality="eeg", location=str(eeg_root),
                           channels=["Oz", "O1"], timepoints=mask)
    assert sel.shape == (2, 4, 2, 3)
    assert list(sel.channel.values) == ["Oz", "O1"]
    np.testing.assert_array_equal(sel.values,
                                  full.sel(channel=["Oz", "O1"]).isel(time=[20, 40, 41]).values)
    by_index = nest_data.encode(images[:2], subject=1, modality="eeg", location=str(eeg_root),
                                timepoints=[5])
    assert by_index.shape == (2, 4, 63, 1)
    with pytest.raises(nest_data.NestDataError, match="unknown channel.*'Cz9'.*valid: Fp1, F3"):
        nest_data.encode(images[:1], subject=1, modality="eeg", location=str(eeg_root),
                         channels=["Cz9"])
    with pytest.raises(nest_data.NestDataError, match="needs 140 values with at least one"):
        nest_data.encode(images[:1], subject=1, modality="eeg", location=str(eeg_root),
                         timepoints=np.zeros(140, dtype=bool))
    with pytest.raises(nest_data.NestDataError, match=r"indices must lie in 0\.\.139"):
        nest_data.encode(images[:1], subject=1, modality="eeg", location=str(eeg_root),
                         timepoints=[140])


def test_encode_reproduces_pregenerated_responses(
    eeg_root: Path, images: np.ndarray, expected: dict[int, np.ndarray], tmp_path: Path
) -> None:
    """A NED set whose responses the reference computed: encode gives the stored values."""
    ned = write_ned(tmp_path, modalities=["eeg"], subjects=[1], imagesets=["things"],
                    n_images=3, responses={("eeg", "things", 1, None): expected[1]},
                    show_progress=False)
    convert_ned(ned, tmp_path / "stores", show_progress=False)
    stored = nest_data.open(modality="eeg", imageset="things", subject=1,
                            location=str(tmp_path / "stores"))
    got = nest_data.encode(list(images), modality="eeg", subject=1, location=str(eeg_root))
    assert got.dims == stored.dims and got.shape == stored.shape
    np.testing.assert_allclose(got.values, stored.values, rtol=1e-3, atol=2e-3)
    np.testing.assert_array_equal(got.channel.values, stored.channel.values)
    np.testing.assert_array_equal(got.time.values, stored.time.values)


def test_backbone_location_and_errors(eeg_root: Path, images: np.ndarray, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import save_file

    backbone = eeg_root / "weights/backbones/vit_b_32-imagenet1k_v1"
    moved = tmp_path / "vit.safetensors"
    moved.write_bytes((backbone / "weights.safetensors").read_bytes())
    default = nest_data.encode(images[:1], subject=1, modality="eeg", location=str(eeg_root),
                               cache=False)
    hidden = backbone.with_name("hidden")
    backbone.rename(hidden)  # only the environment variable can find the backbone now
    try:
        with pytest.raises(nest_data.StoreNotFoundError, match="vit_b_32-imagenet1k_v1"):
            nest_data.encode(images[:1], subject=1, modality="eeg", location=str(eeg_root),
                             cache=False)
        monkeypatch.setenv("NEST_DATA_VIT_B_32", str(moved))
        from_env = nest_data.encode(images[:1], subject=1, modality="eeg",
                                    location=str(eeg_root), cache=False)
    finally:
        hidden.rename(backbone)
    np.testing.assert_array_equal(default.values, from_env.values)
    assert from_env.attrs["backbone_sha256"] == default.attrs["backbone_sha256"]
    with pytest.raises(nest_data.NestDataError, match="is a torch pickle; nest-data only loads "
                                                      "safetensors.*--vit-b-32 FILE"):
        nest_data.encode(images[:1], subject=1, modality="eeg", location=str(eeg_root),
                         backbone=tmp_path / VIT_B_32_FILE)
    with pytest.raises(nest_data.StoreNotFoundError, match="no ViT-B/32 weights file at"):
        nest_data.encode(images[:1], subject=1, modality="eeg", location=str(eeg_root),
                         backbone=tmp_path / "missing.safetensors")
    wrong = tmp_path / "wrong.safetensors"
    save_file({"conv_proj.weight": torch.zeros(2)}, str(wrong))
    with pytest.raises(nest_data.NestDataError, match="not torchvision's vit_b_32 state_dict"):
        nest_data.encode(images[:1], subject=1, modality="eeg", location=str(eeg_root),
                         backbone=wrong)
    with pytest.raises(nest_data.StoreNotFoundError, match="no converted weights at .*sub-03"):
        nest_data.encode(images[:1], subject=3, modality="eeg", location=str(eeg_root))


def test_converter_checks_the_files(tmp_path: Path) -> None:
    from nest_data.errors import ConversionError

    src = tmp_path / "src"
    paths = write_eeg_weights(src, 4, layout="ned", n_components=2)
    paths[1].unlink()  # NED's shared pca_param.npy
    with pytest.raises(SourceFormatError, match="need the shared pca_param.npy"):
        convert_eeg_weights(src, tmp_path / "out")
    with pytest.raises(ConversionError, match=r"no EEG weights .* subject=7.*found subjects \[4\]"):
        convert_eeg_weights(src, tmp_path / "out", subject=7)
    write_eeg_weights(src, 5, layout="berg", n_components=2)
    meta = src / "encoding_models/modality-eeg/train_dataset-things_eeg_2/model-vit_b_32/metadata"
    doc = np.load(meta / "metadata_subject-05.npy", allow_pickle=True).item()
    doc["eeg"]["times"] = doc["eeg"]["times"][:100]
    np.save(meta / "metadata_subject-05.npy", np.asarray(doc, dtype=object), allow_pickle=True)
    with pytest.raises(SourceFormatError, match="63 channels x 100 times, but the regressions"):
        convert_eeg_weights(src, tmp_path / "out", subject=5)
    evil = eeg_weight_paths(src, 6)[0]
    evil.write_bytes(np.lib.format.magic(1, 0) + b"not an npy header")
    with pytest.raises(SourceFormatError, match="weights_subject-06.npy"):
        convert_eeg_weights(src, tmp_path / "out", subject=6)
    assert not (tmp_path / "out" / "weights").exists()  # nothing half-written


def test_cli_converts_eeg_weights_without_trust_flag(tmp_path: Path) -> None:
    from nest_data._cli import main

    write_eeg_weights(tmp_path / "src", 8, n_components=2)
    assert main(["convert", "weights", str(tmp_path / "src"), str(tmp_path / "out")]) == 0
    folder = tmp_path / "out/weights/modality-eeg/train_dataset-things_eeg_2/model-vit_b_32/sub-08"
    doc = json.loads((folder / "model.json").read_text())
    assert doc["layout"] == "berg" and doc["n_components"] == 2
    assert doc["channels"] == list(CHANNELS) and len(doc["times"]) == 140
    assert main(["convert", "weights", str(tmp_path / "out2")]) == 2  # nothing to convert


def test_generate_an_eeg_store(eeg_root: Path, images: np.ndarray,
                               expected: dict[int, np.ndarray], tmp_path: Path) -> None:
    from nest_data.synthetic import write_image_zarr

    write_image_zarr(tmp_path / "imgs.zarr", images, ["a", "b", "c"], chunk_images=2)
    url = nest_data.generate(tmp_path / "imgs.zarr", tmp_path / "out", imageset="mine",
                             subject=1, modality="eeg", location=str(eeg_root), chunk_images=2)
    assert url.endswith("modality-eeg/train_dataset-things_eeg_2/model-vit_b_32/"
                        "imageset-mine/sub-01.zarr")
    da = nest_data.open_store(url)
    assert da.dims == ("image", "repetition", "channel", "time") and da.shape == (3, 4, 63, 140)
    assert list(da.image_id.values) == ["a", "b", "c"] and list(da.channel.values) == list(CHANNELS)
    np.testing.assert_allclose(da.values, expected[1], rtol=1e-3, atol=2e-3)
