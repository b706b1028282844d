"""The embedded demo: the whole collection in miniature, and the main job on it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

import nest_data
from nest_data._cli import main as cli
from nest_data.synthetic import ROI_VOXELS_SUB01, roi_voxel_count


def test_demo_collection_is_complete(demo: Path) -> None:
    stores = nest_data._verify.find_stores(demo)
    # Every NED entry, and one fsaverage store (subject 1 on things) that generate wrote;
    # the catalog's fsaverage ROIs of a subject share that subject's one store.
    cat = nest_data.catalog()
    assert len(stores) == len(cat.search(model="fwrf")) + len(cat.search(modality="eeg")) + 1
    assert len(stores) == 583
    for subject in (1, 5, 8):
        da = nest_data.open(imageset="nsd", subject=subject, roi="ventral", location="demo")
        assert da.shape == (24, roi_voxel_count(subject, "ventral"))
    assert nest_data.open(imageset="imagenet_val", subject=1, roi="lateral",
                          location="demo").sizes["voxel"] == ROI_VOXELS_SUB01["lateral"]
    eeg = nest_data.open(modality="eeg", imageset="things", subject=10, location="demo")
    assert eeg.shape == (24, 4, 63, 140)


def test_demo_encodes_and_generates_for_new_images(demo: Path, tmp_path: Path) -> None:
    """The demo holds subject 1's fwRF weights: encode and generate answer on location="demo"."""
    from nest_data._demo import DEMO_FWRF_ROIS
    from nest_data.synthetic import test_images, write_image_folder

    images = test_images(4, 96, seed=3)
    for roi in DEMO_FWRF_ROIS:
        computed = nest_data.encode(images, subject=1, roi=roi, location="demo")
        stored = nest_data.open(imageset="things", subject=1, roi=roi, location="demo")
        assert computed.shape == (4, roi_voxel_count(1, roi))
        # the weights' voxels are the stored entry's voxels, labels and all
        np.testing.assert_array_equal(computed.ncsnr.values, stored.ncsnr.values)
        assert np.isfinite(computed.values).all() and computed.std("image").min() > 0
    folder = tmp_path / "images"
    write_image_folder(folder, images)
    url = nest_data.generate(folder, tmp_path / "out", imageset="mine", subject=1, roi="V1",
                             location="demo", device="cpu")
    generated = nest_data.open_store(url)
    v1 = nest_data.encode(images, subject=1, roi="V1", location="demo")
    np.testing.assert_allclose(generated.values, v1.values, rtol=1e-5, atol=1e-6)


def test_demo_build_is_idempotent(demo: Path) -> None:
    marker = demo / ".nest-data-demo.json"
    before = marker.stat().st_mtime_ns
    assert nest_data.build_demo(show_progress=False) == demo
    assert marker.stat().st_mtime_ns == before


def test_cli_demo_runs_main_job(demo: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["demo", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("The demo's numbers are SYNTHETIC")
    assert "Opened fmri/nsd/fwrf things sub-01 V1: 24 images x 1350 voxels" in out
    da = nest_data.open(imageset="things", subject=1, roi="V1", location="demo")
    top = nest_data.top_images(da, k=5, min_ncsnr=0.5)
    for rank, (image, concept) in enumerate(zip(top.image.values, top.concept.values,
                                                strict=True), 1):
        assert f"{rank}. image {int(image):>5}  {concept:<12}" in out
    png = tmp_path / "nest-data-demo_things_sub-01_V1.png"
    assert f"Figure: {png}" in out
    assert "Encoded 4 new images with sub-01's V1 fwRF encoder: 4 x 1350 voxels" in out
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def _saved_figures(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Record every matplotlib Figure that is saved, to inspect its axes."""
    import matplotlib.figure

    saved: list[Any] = []
    real = matplotlib.figure.Figure.savefig

    def spy(self: matplotlib.figure.Figure, *a: object, **k: object) -> object:
        saved.append(self)
        return real(self, *a, **k)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    return saved


def test_figure_paints_roi_into_volume(demo: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib.axes

    shown = []
    real = matplotlib.axes.Axes.imshow

    def spy(self: matplotlib.axes.Axes, data: np.ndarray, *a: object, **k: object) -> object:
        shown.append(np.asarray(data))
        return real(self, data, *a, **k)

    monkeypatch.setattr(matplotlib.axes.Axes, "imshow", spy)
    figures = _saved_figures(monkeypatch)
    da = nest_data.open(imageset="things", subject=2, roi="FFA-1", location="demo")
    backend = matplotlib.get_backend()
    matplotlib.use("svg")  # a user's own backend, as a notebook's would be
    try:
        nest_data.plot_roi_summary(da, tmp_path / "f.png")
        assert matplotlib.get_backend() == "svg"  # left as it was
    finally:
        matplotlib.use(backend)
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    background, slice_ = shown  # the ROI's mean over its slices (grey), then the slice
    assert np.isfinite(background).sum() == len({(i, j) for i, j in
                                                  zip(da.i.values, da.j.values, strict=True)})
    k = int(np.bincount(da.k.values).argmax())
    in_slice = da.k.values == k
    assert np.isfinite(slice_).sum() == in_slice.sum()
    means = da.values.mean(axis=0)
    np.testing.assert_allclose(slice_.T[da.i.values[in_slice], da.j.values[in_slice]],
                               means[in_slice], rtol=1e-6)
    (fig,) = figures
    volume_ax = fig.axes[1]
    assert (volume_ax.get_xlabel(), volume_ax.get_ylabel()) == ("x (mm)", "y (mm)")
    z = float(da.z.values[in_slice][0])
    assert f"axial slice z = {z:+.1f} mm" in volume_ax.get_title()
    assert volume_ax.collections  # the ROI's outline
    xs = da.x.values
    assert volume_ax.get_xlim()[0] < xs.min() < xs.max() < volume_ax.get_xlim()[1]
    assert "mean over" in fig.axes[-1].get_ylabel()  # the colorbar


def test_demo_fsaverage_store_and_figure(demo: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    keys = {"imageset": "things", "subject": 1, "train_dataset": "nsd_fsaverage",
            "location": "demo"}
    whole = nest_data.open(**keys)
    assert whole.shape == (24, 2 * 163842) and whole.data.chunksize == (24, 4096)
    ffa = nest_data.open(roi="FFA-1", **keys)
    assert ffa.attrs["roi"] == "FFA-1" and set(ffa.hemisphere.values) == {"lh", "rh"}
    np.testing.assert_array_equal(ffa.values, whole.sel(vertex=ffa.vertex).values)
    figures = _saved_figures(monkeypatch)
    png = nest_data.plot_surface_map(whole.mean("image"), tmp_path / "surface.png")
    assert png.stat().st_size > 10_000
    (fig,) = figures
    bar = fig.axes[-1]
    assert bar.get_ylabel().replace("\n", " ") == whole.attrs["units"]  # colorbar in units
    limit = float(np.percentile(np.abs(whole.mean("image").values), 99))
    np.testing.assert_allclose(bar.get_ylim(), (-limit, limit), rtol=1e-6)
    with pytest.raises(nest_data.NestDataError, match="needs one value per vertex"):
        nest_data.plot_surface_map(whole, tmp_path / "bad.png")


def test_commands_take_location_names_and_fit_80_columns(demo: Path,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:


    assert cli(["--no-progress", "verify", "demo"]) == 0
    out = capsys.readouterr().out
    stores = sum(1 for meta in demo.rglob("*.zarr/zarr.json"))  # verify reads 1 GB: once
    assert out.startswith(f"{stores} store(s) checked under demo: all checksums match")
    assert cli(["verify", "demmo"]) == 2
    assert "unknown location 'demmo'" in capsys.readouterr().err
    assert cli(["catalog"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["modality", "train_dataset", "model", "imageset", "subject",
                                "roi", "n_images"]
    assert max(map(len, lines)) <= 80 and lines[-1].startswith("1350 entries")
    assert cli(["catalog", "--roi", "FFA-1", "--subject", "2", "--all-columns"]) == 0
    assert "path" in capsys.readouterr().out.splitlines()[0]


def test_readme_quickstart_runs_and_selects_something(demo: Path) -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = readme.split("## Quickstart", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, object] = {}
    exec(compile(block, "README.md (Quickstart)", "exec"), namespace)
    da = namespace["da"]
    assert isinstance(da, xr.DataArray)
    assert da.groupby("concept").mean("image").sizes["concept"] > 1
    assert da.sel(image=da.concept == da.concept.values[0]).sizes["image"] >= 1
    assert da.where(da.ncsnr > 0.5, drop=True).sizes["voxel"] > 0
    if importlib.util.find_spec("torch") is None:
        return
    new_images = readme.split("Responses to new images", 1)[1]
    block = new_images.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(block, "README.md (new images)", "exec"), namespace)
    new, more = namespace["new"], namespace["more"]
    assert isinstance(new, xr.DataArray) and isinstance(more, xr.DataArray)
    assert new.dims == ("image", "voxel")
    assert more.sizes == {"image": 8, "voxel": new.sizes["voxel"]}


def test_a_demo_of_any_size_is_used_unless_a_size_is_asked_for(tmp_path: Path) -> None:
    from nest_data._demo import _built, _stamp

    marker = tmp_path / "marker.json"
    marker.write_text(json.dumps(_stamp(100)))
    assert _built(marker, _stamp(24), any_size=True)  # no size asked: the built one
    assert not _built(marker, _stamp(24))  # 24 asked: built again
    assert _built(marker, _stamp(100))
    marker.write_text(json.dumps({**_stamp(100), "seed": -1}))
    assert not _built(marker, _stamp(24), any_size=True)  # another build: never reused


def test_the_demo_command_builds_once_with_the_size_asked(monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    from nest_data import _demo
    from nest_data._cli import main

    calls: list[tuple[str, dict[str, object]]] = []

    class Result:
        summary = "done"

    monkeypatch.setattr(_demo, "build_demo", lambda **kw: calls.append(("build", kw)))
    monkeypatch.setattr(_demo, "run_demo",
                        lambda out, **kw: calls.append(("run", kw)) or Result())
    assert main(["demo", "--rebuild", "--n-images", "3", "--out", str(tmp_path)]) == 0
    assert [(name, kw.get("n_images")) for name, kw in calls] == [("build", 3), ("run", 3)]
    calls.clear()
    assert main(["demo", "--n-images", "5", "--out", str(tmp_path)]) == 0
    assert [(name, kw.get("n_images")) for name, kw in calls] == [("run", 5)]
    calls.clear()
    assert main(["demo", "--out", str(tmp_path)]) == 0
    assert [(name, kw.get("n_images")) for name, kw in calls] == [("run", None)]
