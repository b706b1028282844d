"""nest-data generate: a whole image set into a standard store, on dask, resumable."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import nest_data  # noqa: E402
from nest_data._catalog import Entry  # noqa: E402
from nest_data._verify import verify_store  # noqa: E402
from nest_data.converters.weights import convert_fwrf_weights  # noqa: E402
from nest_data.synthetic import (  # noqa: E402
    test_images,
    write_fwrf_weights,
    write_image_folder,
    write_image_zarr,
)

STORE = "modality-fmri/train_dataset-nsd/model-fwrf/imageset-mine/sub-01_roi-V1.zarr"


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src, dest = tmp_path_factory.mktemp("nest"), tmp_path_factory.mktemp("weights")
    write_fwrf_weights(src, 1, "V1", n_voxels=40)
    convert_fwrf_weights(src, dest, trust_pickles=True)
    return dest


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return test_images(10, (72, 90), seed=4)  # wide: center-cropped like encode does


def _files(store: Path) -> dict[str, bytes]:
    return {p.relative_to(store).as_posix(): p.read_bytes()
            for p in sorted(store.rglob("*")) if p.is_file()}


def test_folder_to_store_matches_encode(weights: Path, images: np.ndarray, tmp_path: Path,
                                        caplog: pytest.LogCaptureFixture) -> None:
    names = [f"cat/{i:02d}" if i % 2 else f"dog/{i:02d}" for i in range(10)]
    write_image_folder(tmp_path / "imgs", images, names)
    url = nest_data.generate(tmp_path / "imgs", tmp_path / "out", imageset="mine", subject=1,
                             roi="V1", location=str(weights), chunk_images=4, batch_size=3)
    assert url == str(tmp_path / "out" / STORE)
    da = nest_data.open_store(url)
    assert da.dims == ("image", "voxel") and da.shape == (10, 40)
    assert da.chunks == ((4, 4, 2), (40,))  # one stored chunk per task
    assert list(da.image_id.values) == sorted(f"{n}.png" for n in names)
    order = [names.index(n.removesuffix(".png")) for n in da.image_id.values]
    expected = nest_data.encode(images[order], subject=1, roi="V1", location=str(weights),
                                cache=False)
    np.testing.assert_allclose(da.values, expected.values, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(da.ncsnr.values, expected.ncsnr.values)
    assert da.attrs["imageset"] == "mine" and da.attrs["roi"] == "V1"
    assert da.attrs["provenance"]["images"]["n_images"] == 10
    assert verify_store(Path(url)) == []
    assert not (tmp_path / "out" / ".nest-data-staging").exists() or not any(
        (tmp_path / "out" / ".nest-data-staging").iterdir())
    with caplog.at_level(logging.INFO, logger="nest_data"):
        nest_data.generate(tmp_path / "imgs", tmp_path / "out", imageset="mine", subject=1,
                           roi="V1", location=str(weights), chunk_images=4, batch_size=3)
    assert "is up to date" in caplog.text


def test_zarr_images_on_a_local_cluster(weights: Path, images: np.ndarray,
                                        tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    ids = [f"img-{i}" for i in range(10)]
    write_image_zarr(tmp_path / "imgs.zarr", images.transpose(0, 3, 1, 2), ids, chunk_images=3)
    serial = nest_data.generate(tmp_path / "imgs.zarr", tmp_path / "serial", imageset="mine",
                                subject=1, roi="V1", location=str(weights), chunk_images=3)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        url = nest_data.generate(tmp_path / "imgs.zarr", tmp_path / "cluster", imageset="mine",
                                 subject=1, roi="V1", location=str(weights), chunk_images=3,
                                 client=client)
        workers = client.run(os.getpid)
    assert len(set(workers.values())) == 2
    got, ref = nest_data.open_store(url), nest_data.open_store(serial)
    assert list(got.image_id.values) == ids
    np.testing.assert_allclose(got.values, ref.values, rtol=1e-5, atol=1e-6)
    assert verify_store(Path(url)) == []

    from nest_data._cli import main  # the CLI's own LocalCluster

    assert main(["--no-progress", "generate", str(tmp_path / "imgs.zarr"), str(tmp_path / "cli"),
                 "--imageset", "mine", "--subject", "1", "--roi", "V1", "--location",
                 str(weights), "--chunk-images", "3", "--workers", "2"]) == 0
    cli = nest_data.open_store(tmp_path / "cli" / STORE)
    np.testing.assert_allclose(cli.values, ref.values, rtol=1e-5, atol=1e-6)


def test_killed_run_resumes_bit_identical(weights: Path, tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    """SIGKILL a CLI run midway; the rerun encodes only what is left and ends identical."""
    many = test_images(24, 64, seed=8)
    write_image_folder(tmp_path / "imgs", many)
    args = [str(tmp_path / "imgs"), "--imageset", "mine", "--subject", "1", "--roi", "V1",
            "--location", str(weights), "--chunk-images", "1"]
    env = {**os.environ, "NEST_DATA_PROGRESS": "0"}
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; from nest_data._cli import main; "
         "sys.exit(main(sys.argv[1:]))", "--no-progress", "generate", *args[:1],
         str(tmp_path / "killed"), *args[1:]],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    staging = tmp_path / "killed" / ".nest-data-staging"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            markers = list(staging.glob("*.progress/*.json")) if staging.exists() else []
            if len(markers) >= 3:
                break
            assert child.poll() is None, f"the run ended before it could be killed: " \
                                         f"{child.communicate()[1].decode()[-2000:]}"
            time.sleep(0.01)
        else:
            pytest.fail("no chunk was finished within 120 s")
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=30)
    done_before = len(list(staging.glob("*.progress/*.json")))
    assert 3 <= done_before < 24
    assert not (tmp_path / "killed" / STORE).exists()  # nothing half-visible

    from nest_data._cli import main

    with caplog.at_level(logging.INFO, logger="nest_data"):
        assert main(["generate", args[0], str(tmp_path / "killed"), *args[1:]]) == 0
    assert f"24 images in 24 chunks ({done_before} done before)" in caplog.text
    assert main(["generate", args[0], str(tmp_path / "whole"), *args[1:]]) == 0
    resumed, whole = _files(tmp_path / "killed" / STORE), _files(tmp_path / "whole" / STORE)
    assert sorted(resumed) == sorted(whole) and len(resumed) > 24
    assert resumed == whole  # every byte of every object and metadata file
    meta = json.loads((tmp_path / "killed" / STORE / "zarr.json").read_bytes())
    assert meta["attributes"]["nest_data"]["complete"] is True
    assert not any(staging.iterdir())


def test_bad_inputs_are_explained(weights: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(nest_data.NestDataError, match="holds no image files"):
        nest_data.generate(tmp_path / "empty", tmp_path / "out", imageset="mine", subject=1,
                           roi="V1", location=str(weights))
    write_image_zarr(tmp_path / "grey.zarr", np.zeros((2, 8, 8, 1), np.uint8))
    with pytest.raises(nest_data.NestDataError, match=r"uint8 \(2, 8, 8, 1\); expected uint8 "
                                                      r"\(n, H, W, 3\)"):
        nest_data.generate(tmp_path / "grey.zarr", tmp_path / "out", imageset="mine",
                           subject=1, roi="V1", location=str(weights))
    with pytest.raises(nest_data.NestDataError, match="imageset='a/b': give a short name"):
        nest_data.generate(tmp_path / "grey.zarr", tmp_path / "out", imageset="a/b",
                           subject=1, roi="V1", location=str(weights))
    with pytest.raises(nest_data.NestDataError, match="must be positive"):
        nest_data.generate(tmp_path / "grey.zarr", tmp_path / "out", imageset="mine",
                           subject=1, roi="V1", location=str(weights), chunk_images=0)
    write_image_zarr(tmp_path / "rgb.zarr", np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(nest_data.StoreNotFoundError, match="no converted weights"):
        nest_data.generate(tmp_path / "rgb.zarr", tmp_path / "out", imageset="mine",
                           subject=2, roi="V1", location=str(weights))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("zarr.json"))


def test_output_does_not_depend_on_the_hash_seed(weights: Path, images: np.ndarray,
                                                 tmp_path: Path) -> None:
    """Runs under different PYTHONHASHSEEDs (and safetensors orders) write the same bytes."""
    write_image_folder(tmp_path / "imgs", images[:5])
    stores = []
    for seed in ("1", "2"):
        out = tmp_path / f"out-{seed}"
        run = subprocess.run(
            [sys.executable, "-c", "import sys; from nest_data._cli import main; "
             "sys.exit(main(sys.argv[1:]))", "--no-progress", "generate",
             str(tmp_path / "imgs"), str(out), "--imageset", "mine", "--subject", "1",
             "--roi", "V1", "--location", str(weights), "--chunk-images", "2"],
            env={**os.environ, "PYTHONHASHSEED": seed}, capture_output=True, text=True,
            timeout=300, check=False)
        assert run.returncode == 0, run.stderr
        stores.append(Path(run.stdout.strip()))
    first, second = (_files(s) for s in stores)
    assert first.keys() == second.keys()
    assert [k for k in first if first[k] != second[k]] == []


def test_never_replaces_a_users_folder(weights: Path, images: np.ndarray,
                                       tmp_path: Path) -> None:
    write_image_folder(tmp_path / "imgs", images[:2])
    cat = nest_data.catalog()
    target = tmp_path / "out" / Entry.of(cat.resolve_weights(subject=1, roi="V1")[0], "mine",
                                         1, "V1").path
    target.mkdir(parents=True)
    (target / "notes.txt").write_text("mine")
    with pytest.raises(nest_data.TargetExistsError, match="exists and is a folder that is "
                                                          "not a nest-data store"):
        nest_data.generate(tmp_path / "imgs", tmp_path / "out", imageset="mine", subject=1,
                           roi="V1", location=str(weights))
    assert (target / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "out" / ".nest-data-staging").exists()  # refused before any work


def test_destination_that_is_a_file(weights: Path, images: np.ndarray, tmp_path: Path) -> None:
    write_image_folder(tmp_path / "imgs", images[:2])
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(nest_data.TargetExistsError, match="is a file, not a folder"):
        nest_data.generate(tmp_path / "imgs", afile, imageset="mine", subject=1, roi="V1",
                           location=str(weights))
    assert afile.read_text() == "x"


def test_zarr_group_with_groups_where_arrays_belong(tmp_path: Path) -> None:
    import zarr

    group = zarr.open_group(tmp_path / "g.zarr", mode="w")
    group.create_group("images")
    with pytest.raises(nest_data.InputError, match="'images' is a group; write the images "
                                                   "there as one uint8 array"):
        nest_data.generate(tmp_path / "g.zarr", tmp_path / "out", imageset="x", subject=1,
                           roi="V1")
