"""nest_data.encode: labelled responses to new images from converted NEST weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import nest_data  # noqa: E402
from nest_data.converters.weights import convert_fwrf_weights  # noqa: E402
from nest_data.encoders.fwrf import preprocess  # noqa: E402
from nest_data.synthetic import write_fwrf_weights  # noqa: E402

from .test_fwrf import random_weights, reference_responses  # noqa: E402


@pytest.fixture(scope="module")
def weights_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("nest")
    dest = tmp_path_factory.mktemp("converted")
    write_fwrf_weights(src, 1, "V1")  # the published 1,350 voxels, same mask as write_ned
    convert_fwrf_weights(src, dest, trust_pickles=True)
    return dest


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    rng = np.random.default_rng(11)
    smooth = np.cumsum(np.cumsum(rng.normal(0, 4, (3, 260, 300, 3)), 1), 2)
    lo, hi = smooth.min(), smooth.max()
    return ((smooth - lo) / (hi - lo) * 255).round().astype(np.uint8)  # (B, H, W, 3), wide


def test_values_match_reference_and_labels_match_stored_entry(
    weights_root: Path, images: np.ndarray, collection: Path
) -> None:
    da = nest_data.encode(images, subject=1, roi="V1", location=str(weights_root))
    assert da.dims == ("image", "voxel") and da.shape == (3, 1350) and da.dtype == np.float32
    cropped = images[:, :, 20:280]  # center crop of 260x300 -> 260x260
    x = preprocess(torch.from_numpy(cropped).permute(0, 3, 1, 2)).numpy()
    expected = reference_responses(x.astype(np.float64), *random_weights(1350, 0 + 1000 + 1))
    np.testing.assert_allclose(da.values, expected, rtol=2e-4, atol=2e-5)
    stored = nest_data.open(imageset="nsd", subject=1, roi="V1", location=str(collection))
    for name in ("i", "j", "k", "x", "y", "z", "ncsnr", "r2", "noise_ceiling"):
        np.testing.assert_array_equal(da[name].values, stored[name].values)
    assert da.attrs["volume_shape"] == stored.attrs["volume_shape"]
    assert (da.attrs["modality"], da.attrs["subject"], da.attrs["roi"]) == ("fmri", 1, "V1")


def test_input_forms_and_ids(weights_root: Path, images: np.ndarray, tmp_path: Path) -> None:
    from PIL import Image

    loc = str(weights_root)
    base = nest_data.encode(images[:2], subject=1, roi="V1", location=loc, batch_size=1)
    chw = nest_data.encode(images[:2].transpose(0, 3, 1, 2), subject=1, roi="V1",
                           location=loc, batch_size=2)
    pil = nest_data.encode([Image.fromarray(images[0]), Image.fromarray(images[1])],
                           subject=1, roi="V1", location=loc)
    Image.fromarray(images[0]).save(tmp_path / "a.png")
    path = nest_data.encode(tmp_path / "a.png", subject=1, roi="V1", location=loc)
    np.testing.assert_allclose(chw.values, base.values, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pil.values, base.values, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(path.values[0], base.values[0], rtol=1e-5, atol=1e-6)
    assert list(pil.image.values) == list(base.image.values)  # content hashes
    assert base.image.values[0] != base.image.values[1] and len(base.image.values[0]) == 16
    named = nest_data.encode(images[:2], subject=1, roi="V1", location=loc,
                             image_ids=["cat.jpg", "dog.jpg"])
    assert list(named.image.values) == ["cat.jpg", "dog.jpg"]
    np.testing.assert_allclose(named.sel(image="dog.jpg").values, base.values[1], rtol=1e-5,
                               atol=1e-6)


def test_bad_inputs_are_explained(weights_root: Path, images: np.ndarray) -> None:
    loc = str(weights_root)
    with pytest.raises(nest_data.NestDataError, match=r"image 0: dtype is float64, not uint8\. "
                                                      r"Give uint8 RGB images.*astype\('uint8'\)"):
        nest_data.encode(images / 255.0, subject=1, roi="V1", location=loc)
    with pytest.raises(nest_data.NestDataError, match=r"image 1: shape \(5, 5\) is not"):
        nest_data.encode([images[0], np.zeros((5, 5), np.uint8)], subject=1, roi="V1",
                         location=loc)
    with pytest.raises(nest_data.NestDataError, match="cannot read '/no/such.png'"):
        nest_data.encode("/no/such.png", subject=1, roi="V1", location=loc)
    with pytest.raises(nest_data.NestDataError, match="1 image_ids for 3 images"):
        nest_data.encode(images, subject=1, roi="V1", location=loc, image_ids=["a"])
    with pytest.raises(nest_data.NestDataError, match="modality='meg'; encoders exist for"):
        nest_data.encode(images, subject=1, modality="meg", location=loc)
    with pytest.raises(nest_data.NestDataError, match="channels= and timepoints= select EEG"):
        nest_data.encode(images, subject=1, roi="V1", location=loc, channels=["Oz"])
    with pytest.raises(nest_data.NestDataError, match="batch_size must be a positive"):
        nest_data.encode(images, subject=1, roi="V1", location=loc, batch_size=0)
    with pytest.raises(nest_data.StoreNotFoundError, match="no converted weights at .*"
                                                           "sub-01_roi-FFA-1.*--trust-pickles"):
        nest_data.encode(images, subject=1, roi="FFA-1", location=loc)
    with pytest.raises(nest_data.UnknownKeyError, match="unknown roi 'V9'"):
        nest_data.encode(images, subject=1, roi="V9", location=loc)


def test_cache_means_asking_again_computes_nothing(
    weights_root: Path, images: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nest_data.encoders.fwrf import FwrfModel

    monkeypatch.setenv("NEST_DATA_CACHE_DIR", str(tmp_path))
    calls: list[int] = []
    real = FwrfModel.forward

    def counting(self: FwrfModel, x: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        return real(self, x)

    monkeypatch.setattr(FwrfModel, "forward", counting)
    loc = str(weights_root)
    first = nest_data.encode(images[:2], subject=1, roi="V1", location=loc)
    assert calls == [2]
    again = nest_data.encode(images[:2], subject=1, roi="V1", location=loc)
    assert calls == [2]  # nothing computed
    np.testing.assert_array_equal(again.values, first.values)
    more = nest_data.encode(images, subject=1, roi="V1", location=loc)
    assert calls == [2, 1]  # only the new image
    np.testing.assert_array_equal(more.values[:2], first.values)
    nest_data.encode(images[:1], subject=1, roi="V1", location=loc, cache=False)
    assert calls == [2, 1, 1]
    files = list((tmp_path / "responses").rglob("*.npy"))
    assert len(files) == 3 and not [f for f in files if f.name.startswith(".tmp-")]


def test_open_refuses_images_and_points_to_encode(weights_root: Path, images: np.ndarray
                                                 ) -> None:
    with pytest.raises(nest_data.InputError,
                       match=r"open\(\) reads stored responses; for images of your own, call "
                             r"nest_data.encode\(images, subject=..., roi=..., location=...\)"):
        nest_data.open(images=images[:1], subject=1, roi="V1", location=str(weights_root))


def test_encode_reproduces_pregenerated_responses(weights_root: Path, tmp_path: Path) -> None:
    """A NED set whose responses the NumPy reference computed: encode gives the stored values.

    The images are 227 px, so NEST's resize is the identity and the reference needs only /255.
    """
    from nest_data.converters import convert_ned
    from nest_data.synthetic import test_images, write_ned

    images = test_images(4, 227, seed=9)
    x = images.transpose(0, 3, 1, 2) / 255.0
    expected = reference_responses(x, *random_weights(1350, 0 + 1000 + 1))
    ned = write_ned(tmp_path, modalities=["fmri"], subjects=[1], rois=["V1"],
                    imagesets=["nsd"], n_images=4,
                    responses={("fmri", "nsd", 1, "V1"): expected}, show_progress=False)
    convert_ned(ned, tmp_path / "stores", show_progress=False)
    stored = nest_data.open(imageset="nsd", subject=1, roi="V1", location=str(tmp_path / "stores"))
    got = nest_data.encode(images, subject=1, roi="V1", location=str(weights_root))
    assert got.dims == stored.dims and got.shape == stored.shape == (4, 1350)
    np.testing.assert_allclose(got.values, stored.values, rtol=2e-4, atol=2e-5)
    np.testing.assert_array_equal(got.ncsnr.values, stored.ncsnr.values)
    with pytest.raises(ValueError, match=r"shape \(4, 7\), expected \(4, 1350\)"):
        write_ned(tmp_path / "bad", modalities=["fmri"], subjects=[1], rois=["V1"],
                  imagesets=["nsd"], n_images=4, show_progress=False,
                  responses={("fmri", "nsd", 1, "V1"): np.zeros((4, 7))})


def test_weights_converted_again_are_loaded_again(tmp_path: Path) -> None:
    """Loaded models are kept per process, but keyed by the weights' recorded SHA-256."""
    images = np.zeros((1, 64, 64, 3), np.uint8)
    values = []
    for seed in (0, 1):
        write_fwrf_weights(tmp_path / f"nest{seed}", 1, "V1", n_voxels=6, seed=seed)
        convert_fwrf_weights(tmp_path / f"nest{seed}", tmp_path / "dest", trust_pickles=True)
        values.append(nest_data.encode(images, subject=1, roi="V1", cache=False,
                                       location=str(tmp_path / "dest")).values)
    assert not np.allclose(values[0], values[1])


def test_no_cuda_and_decompression_bombs_are_our_errors(weights_root: Path, images: np.ndarray,
                                                        tmp_path: Path) -> None:
    if not torch.cuda.is_available():  # where CUDA exists, device='cuda' is valid
        with pytest.raises(nest_data.InputError, match="device='cuda', but torch sees no "
                                                       "CUDA device here; use device='auto'"):
            nest_data.encode(images[:1], subject=1, roi="V1", location=str(weights_root),
                             device="cuda", cache=False)
    from PIL import Image

    bomb = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(bomb)  # 400 M pixels in a tiny file
    with pytest.raises(nest_data.InputError, match="image 0: .*bomb.png' is too large to "
                                                   "decode safely .* resize it first"):
        nest_data.encode([str(bomb)], subject=1, roi="V1", location=str(weights_root))


def test_encode_command(weights_root: Path, images: np.ndarray, tmp_path: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    import xarray as xr
    from PIL import Image

    from nest_data._cli import main

    files = []
    for k in range(2):
        files.append(str(tmp_path / f"im{k}.png"))
        Image.fromarray(images[k]).save(files[-1])
    loc = ["--subject", "1", "--roi", "V1", "--location", str(weights_root)]
    expected = nest_data.encode(files, subject=1, roi="V1", location=str(weights_root))
    assert main(["--no-progress", "encode", *files, *loc]) == 0
    lines = capsys.readouterr().out.splitlines()
    printed = [float(line.split("\t")[1]) for line in lines[:2]]
    np.testing.assert_allclose(printed, expected.mean("voxel").values, rtol=1e-5)
    assert lines[2].startswith("mean over voxel of V1 responses")
    for out in (tmp_path / "r.zarr", tmp_path / "r.nc"):
        assert main(["--no-progress", "encode", *files, *loc, "--out", str(out)]) == 0
        with xr.open_dataset(out, **({"engine": "zarr"} if out.suffix == ".zarr" else {})
                             ) as ds:
            np.testing.assert_array_equal(ds.responses.values, expected.values)
            np.testing.assert_array_equal(ds.ncsnr.values, expected.ncsnr.values)
    assert main(["encode", *files, *loc, "--out", str(tmp_path / "r.txt")]) == 2
    assert "give a file ending in .nc (NetCDF) or a folder ending in .zarr" in (
        capsys.readouterr().err)
