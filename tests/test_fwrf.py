"""The fwRF encoder against an independent NumPy implementation written from the spec."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from nest_data.encoders.fwrf import FwrfModel, preprocess  # noqa: E402
from nest_data.synthetic import fwrf_state_dicts  # noqa: E402

# ------------------------------------------------------------------- reference (NumPy)

def _conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int = 1, pad: int = 0
          ) -> np.ndarray:
    kh, kw = w.shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))
    win = win[:, :, ::stride, ::stride]  # (B, C, Ho, Wo, kh, kw)
    cols = win.transpose(0, 2, 3, 1, 4, 5).reshape(*win.shape[0:1], *win.shape[2:4], -1)
    out = cols @ w.reshape(w.shape[0], -1).T + b  # (B, Ho, Wo, O)
    return out.transpose(0, 3, 1, 2)


def _maxpool(x: np.ndarray, size: int = 3, stride: int = 2, pad: int = 0) -> np.ndarray:
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=-np.inf)
    win = np.lib.stride_tricks.sliding_window_view(xp, (size, size), axis=(2, 3))
    return win[:, :, ::stride, ::stride].max(axis=(4, 5))


def _bn(x: np.ndarray, sd: dict, prefix: str) -> np.ndarray:
    scale = sd[f"{prefix}.weight"] / np.sqrt(sd[f"{prefix}.running_var"] + 1e-5)
    shift = sd[f"{prefix}.bias"] - sd[f"{prefix}.running_mean"] * scale
    return x * scale[None, :, None, None] + shift[None, :, None, None]


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


def _nl(x: np.ndarray) -> np.ndarray:
    return np.log(1 + np.abs(x)) * np.tanh(x)


def reference_features(x: np.ndarray, sd: dict) -> list[np.ndarray]:
    """The three feature maps of NEST's encoder, as the spec describes them."""
    x = x - sd["mu"]
    c1 = _maxpool(_relu(_conv(x, sd["pre.conv1.0.weight"], sd["pre.conv1.0.bias"], 4, 2)))
    c2 = _relu(_conv(c1, sd["pre.conv2.0.weight"], sd["pre.conv2.0.bias"], 1, 2))
    c3 = _relu(_conv(_bn(c2, sd, "enc.bn1"), sd["enc.conv3.weight"], sd["enc.conv3.bias"]))

    def block(name: str, h: np.ndarray) -> np.ndarray:
        h = _bn(h, sd, f"enc.{name}.bn1")
        return _relu(_conv(h, sd[f"enc.{name}.conv1.weight"], sd[f"enc.{name}.conv1.bias"],
                           1, 1))

    c4a = block("conv4a", c3)
    c4b = block("conv4b", c4a)
    c5a = block("conv5a", _maxpool(c4b, 3, 2, 1))
    c5b = block("conv5b", c5a)
    c6a = block("conv6a", c5b)
    c6b = block("conv6b", c6a)
    return [np.concatenate([c1, c2], 1),
            np.concatenate([c3, c4a[:, :64], c4b[:, :64]], 1),
            np.concatenate([c5a[:, :64], c5b[:, :64], c6a[:, :64], c6b], 1)]


def reference_responses(x: np.ndarray, enc: dict, fwrf: dict) -> np.ndarray:
    pooled = []
    for k, fmap in enumerate(reference_features(x, enc)):
        rf = fwrf[f"rf{k}"].reshape(len(fwrf["b"]), -1)
        g = np.exp(rf - rf.max(1, keepdims=True))
        g /= g.sum(1, keepdims=True)
        f = _nl(fmap.reshape(*fmap.shape[:2], -1))  # (B, C, S)
        pooled.append(np.einsum("vs,bcs->vbc", g, f))
    phi = _nl(np.concatenate(pooled, axis=2))
    return np.einsum("vbc,vc->bv", phi, fwrf["w"]) + fwrf["b"]


# ------------------------------------------------------------------- weights

def random_weights(n_voxels: int, seed: int) -> tuple[dict, dict]:
    """The miniature writer's weights (data, not code under test), as float64 for NumPy."""
    enc, fwrf = fwrf_state_dicts(n_voxels, seed)
    return ({k: v.astype(np.float64) if v.dtype.kind == "f" else v for k, v in enc.items()},
            {k: v.astype(np.float64) for k, v in fwrf.items()})


def _torch(sd: dict) -> dict:
    return {k: torch.tensor(v, dtype=torch.int64 if k.endswith("num_batches_tracked")
                            else torch.float32) for k, v in sd.items()}


# ------------------------------------------------------------------- tests

def test_state_dict_layout_is_nest_s() -> None:
    enc, fwrf = random_weights(7, seed=0)
    model = FwrfModel.from_state_dicts([(_torch(enc), _torch(fwrf))])
    keys = sorted(model.encoders[0].state_dict())
    assert len(keys) == 54 and keys == sorted(enc)
    params = sum(p.numel() for p in model.encoders[0].parameters())
    assert 1.3e6 < params < 1.4e6
    assert sorted(model.readouts[0].state_dict()) == ["b", "rf0", "rf1", "rf2", "w"]
    bad = dict(_torch(enc))
    bad["enc.conv7.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="(?s)do not match NEST's fwRF layout.*enc.conv7"):
        FwrfModel.from_state_dicts([(bad, _torch(fwrf))])


@pytest.mark.parametrize("batch", [1, 3])
def test_matches_reference(batch: int) -> None:
    enc, fwrf = random_weights(11, seed=1)
    model = FwrfModel.from_state_dicts([(_torch(enc), _torch(fwrf))])
    x = np.random.default_rng(2).uniform(0, 1, (batch, 3, 227, 227)).astype(np.float32)
    with torch.no_grad():
        got = model(torch.from_numpy(x)).numpy()
    expected = reference_responses(x.astype(np.float64), enc, fwrf)
    assert got.shape == (batch, 11)
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-5)
    assert np.std(expected) > 1e-3  # the comparison is not between constants
    single = [model(torch.from_numpy(x[i:i + 1])).detach().numpy() for i in range(batch)]
    np.testing.assert_allclose(np.concatenate(single), got, rtol=1e-5, atol=1e-6)


def test_two_halves_are_concatenated() -> None:
    """lateral/ventral: voxels split at ceil(n/2), one encoder per half."""
    halves = [random_weights(5, seed=3), random_weights(4, seed=4)]
    model = FwrfModel.from_state_dicts([(_torch(e), _torch(f)) for e, f in halves])
    x = np.random.default_rng(5).uniform(0, 1, (2, 3, 227, 227)).astype(np.float32)
    with torch.no_grad():
        got = model(torch.from_numpy(x)).numpy()
    assert model.n_voxels == 9 and got.shape == (2, 9)
    expected = np.concatenate([reference_responses(x.astype(np.float64), e, f)
                               for e, f in halves], axis=1)
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-5)


def test_preprocess_resizes_like_pil_bilinear() -> None:
    pil = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(6)
    smooth = np.cumsum(np.cumsum(rng.normal(0, 3, (300, 300, 3)), 0), 1)
    img = np.clip((smooth - smooth.min()) / np.ptp(smooth) * 255, 0, 255).astype(np.uint8)
    got = preprocess(torch.from_numpy(img).permute(2, 0, 1)[None]).numpy()[0]
    assert got.shape == (3, 227, 227) and got.dtype == np.float32
    as_uint8 = got * 255
    np.testing.assert_allclose(as_uint8, np.round(as_uint8), atol=1e-4)  # rounded to uint8
    expected = np.asarray(pil.fromarray(img).resize((227, 227), pil.BILINEAR)).transpose(2, 0, 1)
    assert np.abs(as_uint8 - expected).max() <= 1  # same filter; rounding may differ by one
    same = preprocess(torch.from_numpy(img[:227, :227]).permute(2, 0, 1)[None]).numpy()[0]
    np.testing.assert_array_equal(same * 255, img[:227, :227].transpose(2, 0, 1))


def test_preprocess_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="expected uint8 images of shape"):
        preprocess(torch.zeros(1, 3, 10, 10))
    with pytest.raises(ValueError, match="must be square, got 10x12; crop them first"):
        preprocess(torch.zeros(1, 3, 10, 12, dtype=torch.uint8))


def test_weights_convert_and_load_without_pickle(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import pickle

    from nest_data._cli import main
    from nest_data._models import EncoderSource, clear_loaded
    from nest_data.converters.weights import convert_fwrf_weights
    from nest_data.errors import ChecksumError, ConversionError
    from nest_data.synthetic import write_fwrf_weights

    src, dest = tmp_path / "nest", tmp_path / "converted"
    write_fwrf_weights(src, 1, "V1", n_voxels=6)
    write_fwrf_weights(src, 2, "lateral", n_voxels=7)  # two halves: 4 + 3 voxels
    with pytest.raises(ConversionError, match="pickles, and loading a pickle can run arbitrary "
                                              "code.*trust_pickles=True"):
        convert_fwrf_weights(src, dest)
    assert main(["convert", "weights", str(src), str(dest)]) == 2  # refused without the flag
    assert main(["convert", "weights", str(src), str(dest), "--trust-pickles"]) == 0
    assert (dest / "weights/modality-fmri/train_dataset-nsd/model-fwrf/sub-02_roi-lateral/"
                   "model.json").is_file()

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a pickle was loaded while encoding")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    x = np.random.default_rng(7).uniform(0, 1, (2, 3, 227, 227)).astype(np.float32)
    def load_fwrf(**keys: object) -> torch.nn.Module:
        return EncoderSource.resolve(location=str(dest), **keys).load().model  # type: ignore[arg-type]

    v1 = load_fwrf(subject=1, roi="V1")
    lateral = load_fwrf(subject="sub-02", roi="lateral")
    with torch.no_grad():
        got_v1 = v1(torch.from_numpy(x)).numpy()
        got_lat = lateral(torch.from_numpy(x)).numpy()
    expected_v1 = reference_responses(x.astype(np.float64), *random_weights(6, 0 + 1000 + 1))
    expected_lat = np.concatenate([
        reference_responses(x.astype(np.float64), *random_weights(4, 0 + 1000 + 2)),
        reference_responses(x.astype(np.float64), *random_weights(3, 0 + 2000 + 2))], axis=1)
    np.testing.assert_allclose(got_v1, expected_v1, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(got_lat, expected_lat, rtol=2e-4, atol=2e-5)
    monkeypatch.undo()

    weights = dest / "weights/modality-fmri/train_dataset-nsd/model-fwrf/sub-01_roi-V1"
    data = bytearray((weights / "weights.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (weights / "weights.safetensors").write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="weights.safetensors has checksum"):
        clear_loaded()  # as in a new process: the files are read again
        EncoderSource.resolve(subject=1, roi="V1", location=str(dest)).load()


# ------------------------------------------------------------------- NEST's weights folders

def _voxel_tensors(dest: Path, subject: int, roi: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    folder = (dest / "weights/modality-fmri/train_dataset-nsd/model-fwrf"
              / f"sub-{subject:02d}_roi-{roi}")
    return {k.split(".", 1)[1]: v for k, v in load_file(folder / "weights.safetensors").items()
            if k.startswith("voxel.")}


ALL_VOXEL_LABELS = {"voxel", "i", "j", "k", "x", "y", "z", "ncsnr", "r2", "noise_ceiling",
                    "explained_variance"}


def test_ned_era_metadata_keeps_accuracies(tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    """NED's metadata nests the accuracies in encoding_accuracy; BERG's are flat."""
    from nest_data.converters._pickle import load_npy_dict
    from nest_data.converters.weights import convert_fwrf_weights
    from nest_data.synthetic import fwrf_metadata_path, write_fwrf_weights

    for layout in ("berg", "ned"):
        write_fwrf_weights(tmp_path / layout, 1, "V1", n_voxels=6, metadata=layout)
        with caplog.at_level(logging.INFO, logger="nest_data"):
            convert_fwrf_weights(tmp_path / layout, tmp_path / f"{layout}-dest",
                                 trust_pickles=True)
        path = fwrf_metadata_path(tmp_path / layout, 1, "V1")
        assert (f"sub-01 V1: voxel labels from {path} ({layout.upper()}'s layout): voxel, i, j, "
                "k, x, y, z, ncsnr, r2, noise_ceiling, explained_variance") in caplog.text
    meta = load_npy_dict(fwrf_metadata_path(tmp_path / "ned", 1, "V1"))
    assert set(meta["encoding_models"]) == {"encoding_accuracy",
                                            "train_val_test_nsd_image_splits"}
    ned, berg = (_voxel_tensors(tmp_path / f"{n}-dest", 1, "V1") for n in ("ned", "berg"))
    assert set(ned) == set(berg) == ALL_VOXEL_LABELS
    accuracy = meta["encoding_models"]["encoding_accuracy"]
    for coord, field in (("r2", "r2"), ("noise_ceiling", "noise_ceiling"),
                         ("explained_variance", "noise_normalized_encoding")):
        np.testing.assert_array_equal(ned[coord], accuracy[field])
    for name in ned:
        np.testing.assert_array_equal(ned[name], berg[name])


def test_betas_info_gives_voxel_labels_without_metadata(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from nest_data.converters.weights import convert_fwrf_weights
    from nest_data.synthetic import fwrf_metadata_path, fwrf_weight_paths, write_fwrf_weights

    write_fwrf_weights(tmp_path / "berg", 2, "lateral", n_voxels=7)
    pt = write_fwrf_weights(tmp_path / "pt", 2, "lateral", n_voxels=7, metadata="none",
                            betas_info=True)
    metadata = fwrf_metadata_path(tmp_path / "pt", 2, "lateral")
    assert not metadata.exists()
    for name in ("berg", "pt"):
        with caplog.at_level(logging.INFO, logger="nest_data"):
            convert_fwrf_weights(tmp_path / name, tmp_path / f"{name}-dest", trust_pickles=True)
    assert (f"no metadata file {metadata}: voxel labels from betas_info[2] of {pt[0]}: voxel, "
            "i, j, k, x, y, z, ncsnr (no r2, noise ceiling or explained variance)") in caplog.text
    berg = _voxel_tensors(tmp_path / "berg-dest", 2, "lateral")
    from_pt = _voxel_tensors(tmp_path / "pt-dest", 2, "lateral")
    assert set(from_pt) == ALL_VOXEL_LABELS - {"r2", "noise_ceiling", "explained_variance"}
    for name in from_pt:  # both halves hold the whole ROI's labels; the same voxels as BERG's
        np.testing.assert_array_equal(from_pt[name], berg[name])

    for path in fwrf_weight_paths(tmp_path / "pt", 2, "lateral"):  # older betas_info
        checkpoint = torch.load(path, weights_only=False)
        del checkpoint["betas_info"][2]["fmri_affine"]
        torch.save(checkpoint, path)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="nest_data"):
        convert_fwrf_weights(tmp_path / "pt", tmp_path / "no-affine", trust_pickles=True)
    assert "ncsnr (no r2, noise ceiling or explained variance; no fmri_affine, so no x, y, z)" \
        in caplog.text
    assert set(_voxel_tensors(tmp_path / "no-affine", 2, "lateral")) == {"voxel", "i", "j", "k",
                                                                         "ncsnr"}

    bare = write_fwrf_weights(tmp_path / "bare", 1, "V1", n_voxels=5, metadata="none")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="nest_data"):
        convert_fwrf_weights(tmp_path / "bare", tmp_path / "bare-dest", trust_pickles=True)
    assert (f"no metadata file {fwrf_metadata_path(tmp_path / 'bare', 1, 'V1')} and no "
            f"betas_info in {bare[0].name}: encoded responses will carry voxel indices only"
            ) in caplog.text
    assert _voxel_tensors(tmp_path / "bare-dest", 1, "V1") == {}


def test_training_outputs_are_not_weights(tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    from safetensors.numpy import load_file

    from nest_data.converters.weights import convert_fwrf_weights, convert_weights
    from nest_data.synthetic import fwrf_weight_paths, write_fwrf_weights

    for extra in (False, True):
        write_fwrf_weights(tmp_path / f"extra-{extra}", 1, "V1", n_voxels=6, extra_files=extra)
        write_fwrf_weights(tmp_path / f"extra-{extra}", 2, "lateral", n_voxels=7,
                           extra_files=extra)
    folder = fwrf_weight_paths(tmp_path / "extra-True", 1, "V1")[0].parent
    extras = sorted({p.name for p in folder.glob("*.pt")} - {
        p.name for p in fwrf_weight_paths(tmp_path / "extra-True", 1, "V1")
        + fwrf_weight_paths(tmp_path / "extra-True", 2, "lateral")})
    assert extras == [
        "weights_sub-01_roi-V1_train_phase-03.pt", "weights_sub-01_roi-V1train_phase-02.pt",
        "weights_sub-02_roi-lateral_split-1_train_phase-03.pt",
        "weights_sub-02_roi-lateral_split-1train_phase-02.pt",
        "weights_sub-02_roi-lateral_split-2_train_phase-03.pt",
        "weights_sub-02_roi-lateral_split-2train_phase-02.pt",
        "weights_sub-all_roi-V1.pt", "weights_sub-all_roi-lateral.pt"]
    with caplog.at_level(logging.INFO, logger="nest_data"):
        written = convert_fwrf_weights(tmp_path / "extra-True", tmp_path / "dest",
                                       trust_pickles=True)
    assert written == ["weights/modality-fmri/train_dataset-nsd/model-fwrf/sub-01_roi-V1",
                       "weights/modality-fmri/train_dataset-nsd/model-fwrf/sub-02_roi-lateral"]
    for name in extras:
        assert f"skipping {folder / name}: not an fwRF weights file (expected weights_sub-SS_" \
               "roi-ROI.pt or weights_sub-SS_roi-ROI_split-1.pt/_split-2.pt" in caplog.text
    assert convert_weights(tmp_path / "extra-False", tmp_path / "plain", modality="fmri",
                           trust_pickles=True) == written
    for rel in written:  # the extra files changed nothing
        got = load_file(tmp_path / "dest" / rel / "weights.safetensors")
        expected = load_file(tmp_path / "plain" / rel / "weights.safetensors")
        assert got.keys() == expected.keys()
        for key in got:
            np.testing.assert_array_equal(got[key], expected[key])


def test_half_of_a_split_pair_is_refused(tmp_path: Path) -> None:
    from nest_data.converters.weights import convert_fwrf_weights
    from nest_data.errors import SourceFormatError
    from nest_data.synthetic import write_fwrf_weights

    first, second = write_fwrf_weights(tmp_path, 2, "lateral", n_voxels=7, metadata="none")
    second.unlink()
    with pytest.raises(SourceFormatError) as err:
        convert_fwrf_weights(tmp_path, tmp_path / "dest", trust_pickles=True, roi="lateral")
    assert str(err.value) == (
        f"{first.parent}: the fwRF weights of subject 2 lateral are {first.name}; expected "
        "either weights_sub-02_roi-lateral.pt or both halves weights_sub-02_roi-lateral_"
        "split-1.pt and weights_sub-02_roi-lateral_split-2.pt. Download the missing half (or "
        "remove the extra file) and convert again.")
