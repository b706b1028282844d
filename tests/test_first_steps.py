"""A new user's first steps past the Quickstart: every model answers on the demo, a store
that ``generate`` wrote opens by its keys, images are labelled by their file names, and the
messages say what the demo holds."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import nest_data
from nest_data import objectives as obj
from nest_data._cli import main as cli
from nest_data._demo import DEMO_EEG_SUBJECTS, DEMO_FWRF_ROIS, SURFACE_SUBJECT
from nest_data.synthetic import roi_voxel_count, test_images

ROOT = Path(__file__).parents[1]
NEST_DATA = Path(sys.executable).parent / "nest-data"  # the installed command


def _nest_data(*args: str, cwd: Path) -> str:
    """Run the installed ``nest-data`` command; its stdout (it must succeed)."""
    proc = subprocess.run([str(NEST_DATA), "--no-progress", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


# ------------------------------------------------------------- every model on the demo


def test_the_demo_holds_the_encoders_the_examples_use() -> None:
    """Every fwRF ROI that the README, the docs' pages and the examples encode, dream or
    explain with."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
             *sorted((ROOT / "docs" / "guide").glob("*.md")),
             *sorted((ROOT / "examples").glob("*.py"))]
    text = "".join(p.read_text() for p in pages if p.is_file())
    calls = re.findall(r"(?:encode|dream|saliency)\([^()]*?roi=\"([^\"]+)\"", text)
    calls += re.findall(r"obj\.(?:roi_mean|contrast|diversity)\(\"([^\"]+)\"(?:, \"([^\"]+)\")?",
                        text)
    calls += re.findall(r"generate .*--roi (\S+)", text)
    rois = {r for found in calls for r in ([found] if isinstance(found, str) else found) if r}
    rois |= set(re.findall(r"--rois\", nargs=\"\+\", default=\[([^]]+)\]",
                           (ROOT / "examples/dreams.py").read_text())[0]
                .replace('"', "").replace(" ", "").split(","))
    assert {"V1", "FFA-1", "PPA", "lateral"} <= rois  # what the search must find
    assert rois <= set(DEMO_FWRF_ROIS), sorted(rois - set(DEMO_FWRF_ROIS))
    assert 3 in DEMO_EEG_SUBJECTS  # the README's EEG examples use subject 3


@pytest.mark.parametrize("roi", ["V2", "lateral"])
def test_fwrf_rois_the_docs_use_encode_on_the_demo(demo: Path, roi: str) -> None:
    images = test_images(3, 96, seed=5)
    computed = nest_data.encode(images, subject=1, roi=roi, location="demo", cache=False)
    stored = nest_data.open(imageset="nsd", subject=1, roi=roi, location="demo")
    assert computed.shape == (3, roi_voxel_count(1, roi))
    np.testing.assert_array_equal(computed.voxel.values, stored.voxel.values)
    np.testing.assert_array_equal(computed.ncsnr.values, stored.ncsnr.values)
    assert np.isfinite(computed.values).all() and float(computed.std("image").min()) > 0


@pytest.mark.parametrize("subject", DEMO_EEG_SUBJECTS)
def test_eeg_encodes_on_the_demo_in_the_stored_layout(demo: Path, subject: int) -> None:
    images = test_images(2, 64, seed=6)
    eeg = nest_data.encode(images, modality="eeg", subject=subject, location="demo",
                           channels=["O1", "Oz", "O2"], timepoints=np.arange(140) < 40)
    stored = nest_data.open(modality="eeg", imageset="things", subject=subject,
                            location="demo")
    assert eeg.dims == ("image", "repetition", "channel", "time")
    assert eeg.shape == (2, 4, 3, 40)
    assert list(eeg.channel.values) == ["O1", "Oz", "O2"]
    np.testing.assert_array_equal(eeg.time.values, stored.time.values[:40])
    whole = nest_data.encode(images, modality="eeg", subject=subject, location="demo")
    assert list(whole.channel.values) == list(stored.channel.values)
    assert whole.attrs["subject"] == subject and np.isfinite(whole.values).all()
    assert float(np.abs(whole.values[0] - whole.values[1]).max()) > 0  # depends on the image
    np.testing.assert_allclose(eeg.values, whole.sel(channel=["O1", "Oz", "O2"]).values[
        ..., :40], rtol=1e-5, atol=1e-6)


def test_eeg_dream_objective_runs_on_the_demo(demo: Path) -> None:
    tree = nest_data.dream(obj.eeg(["O1", "Oz", "O2"], times=(0.1, 0.2)), subject=3, n=1,
                           steps=2, size=64, location="demo")
    assert tree["images"].shape == (1, 3, 64, 64)
    assert np.isfinite(tree["objective"].values).all()


def test_missing_weights_on_the_demo_name_what_it_holds(demo: Path) -> None:
    images = np.zeros((1, 64, 64, 3), np.uint8)
    for keys, asked in (({"roi": "V3", "subject": 1}, "fmri/nsd/fwrf encoder for sub-01 roi=V3"),
                        ({"roi": "V1", "subject": 2}, "fmri/nsd/fwrf encoder for sub-02 roi=V1"),
                        ({"modality": "eeg", "subject": 2},
                         "eeg/things_eeg_2/vit_b_32 encoder for sub-02")):
        with pytest.raises(nest_data.StoreNotFoundError) as info:
            nest_data.encode(images, location="demo", **keys)
        message = str(info.value)
        assert message.startswith(f"the demo holds no {asked} (location='demo')")
        assert "roi= V1, V2, FFA-1, PPA, lateral" in message
        assert "EEG ViT-B/32 (modality='eeg') of subjects 1 and 3" in message
        assert "pass location=DEST" in message
    with pytest.raises(nest_data.StoreNotFoundError, match="the demo holds no fmri/nsd/fwrf "
                                                           "encoder for sub-01 roi=V3"):
        nest_data.dream(subject=1, roi="V3", n=1, steps=1, size=32, location="demo")


# ------------------------------------------------------- generated stores open by key


@pytest.fixture(scope="module")
def generated(demo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``nest-data generate stim gen ...`` run as the README says, in a working folder."""
    work = tmp_path_factory.mktemp("work")
    stim = work / "stim"
    stim.mkdir()
    for i, image in enumerate(test_images(5, 64, seed=11)):
        Image.fromarray(image).save(stim / f"stim_{i}.png")
    _nest_data("generate", "stim", "gen", "--imageset", "my_stimuli", "--subject", "1",
               "--train-dataset", "nsd_fsaverage", "--location", "demo", cwd=work)
    _nest_data("generate", "stim", "gen", "--imageset", "my_stimuli", "--subject", "1",
               "--roi", "FFA-1", "--location", "demo", cwd=work)
    return work


def test_generated_stores_open_by_their_keys(generated: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(generated)  # location="gen" is the folder, as the user typed it
    surface = nest_data.open(imageset="my_stimuli", subject=1, roi="FFA-1",
                             train_dataset="nsd_fsaverage", location="gen")
    fwrf = nest_data.open(imageset="my_stimuli", subject=1, roi="FFA-1", location="gen")
    path = "modality-fmri/train_dataset-nsd_fsaverage/model-vit_b_32/imageset-my_stimuli/"
    whole = nest_data.open_store(f"gen/{path}sub-01.zarr")
    np.testing.assert_array_equal(surface.values, whole.sel(vertex=surface.vertex).values)
    assert surface.attrs["roi"] == "FFA-1" and surface.sizes["image"] == 5
    assert fwrf.shape == (5, roi_voxel_count(1, "FFA-1"))
    assert list(fwrf.image_id.values) == [f"stim_{i}.png" for i in range(5)]
    images = [np.asarray(Image.open(generated / "stim" / f"stim_{i}.png")) for i in range(5)]
    np.testing.assert_allclose(fwrf.values, nest_data.encode(images, subject=1, roi="FFA-1",
                                                             location="demo").values,
                               rtol=1e-5, atol=1e-6)
    # the other openers take the new image set too; open_many reads the index once
    catalog_module = importlib.import_module("nest_data._catalog.catalog")

    reads = []
    read_index = catalog_module._read_index
    with monkeypatch.context() as patch:
        patch.setattr(catalog_module, "_read_index",
                      lambda root: reads.append(root.url) or read_index(root))
        both = nest_data.open_many(imageset="my_stimuli", subject=[1], roi=["FFA-1", "PPA"],
                                   train_dataset="nsd_fsaverage", location="gen")
    assert len(reads) == 1 and sorted(both["sub-01"].children) == ["FFA-1", "PPA"]
    tree = nest_data.open_many(imageset="my_stimuli", subject=[1], roi=["FFA-1"],
                               location="gen")
    np.testing.assert_array_equal(tree["sub-01/FFA-1"].responses.values, fwrf.values)
    collection = nest_data.open_collection(location="gen", imageset="my_stimuli")
    assert sorted(collection["fmri"].children) == ["nsd", "nsd_fsaverage"]
    meta = nest_data.open_metadata(imageset="my_stimuli", subject=1,
                                   train_dataset="nsd_fsaverage", location="gen")
    assert meta["roi-FFA-1"].size == surface.sizes["vertex"]


def test_the_catalog_lists_a_locations_own_image_sets(generated: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(generated)
    cat = nest_data.catalog()
    assert "my_stimuli" not in cat.vocabulary("imageset")  # no catalog file names it
    here = cat.search(location="gen")
    df = here.df
    assert set(df.imageset) == {"my_stimuli"} and (df.n_images == 5).all()
    # one fwRF store, one surface store: its whole surface and its 31 ROIs
    assert len(df) == 1 + 1 + 31
    assert len(cat.search(location="gen", imageset="my_stimuli", roi="FFA-1")) == 2
    assert "my_stimuli" in cat.at("gen").vocabulary("imageset")
    assert cat.at("demo") is cat  # a location without image sets of its own
    out = _nest_data("catalog", "--location", "gen", "--imageset", "my_stimuli", cwd=generated)
    assert re.search(r"fmri +nsd +fwrf +my_stimuli +1 +FFA-1 +5", out), out
    assert out.splitlines()[-1].startswith("33 entries at gen")
    info = _nest_data("info", "--imageset", "my_stimuli", "--subject", "1", "--roi", "FFA-1",
                      "--location", "gen", cwd=generated)
    assert "imageset=my_stimuli" in info and "imageset-my_stimuli/sub-01_roi-FFA-1.zarr" in info
    # the intake-esm export and mirror see them too
    json_path = cat.to_intake_esm(tmp_path / "esm", location="gen")
    assert "my_stimuli" in json_path.with_suffix(".csv").read_text()
    report = nest_data.mirror(tmp_path / "copy", location="gen", imageset="my_stimuli",
                              roi="FFA-1", model="fwrf", show_progress=False)
    assert report.copied == ["fmri/nsd/fwrf my_stimuli sub-01 FFA-1"]
    copied = nest_data.open(imageset="my_stimuli", subject=1, roi="FFA-1",
                            location=str(tmp_path / "copy"))
    assert copied.sizes["image"] == 5


def test_unknown_image_sets_at_a_location_are_explained(generated: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(generated)
    with pytest.raises(nest_data.UnknownKeyError,
                       match=r"valid imageset values: imagenet_val, my_stimuli, nsd, things\. "
                             r"Did you mean 'my_stimuli'\?"):
        nest_data.open(imageset="my_stimulus", subject=1, roi="FFA-1", location="gen")
    with pytest.raises(nest_data.UnknownKeyError,
                       match=r"unknown imageset 'my_stimuli' .* valid imageset values: "
                             r"imagenet_val, nsd, things\.$"):
        nest_data.open(imageset="my_stimuli", subject=1, roi="FFA-1", location="demo")
    # without any location, the key problem is the one reported
    monkeypatch.delenv("NEST_DATA_LOCATION", raising=False)
    monkeypatch.delenv("NEST_DATA_ROOT", raising=False)
    with pytest.raises(nest_data.UnknownKeyError, match="unknown imageset 'my_stimuli'"):
        nest_data.open(imageset="my_stimuli", subject=1, roi="FFA-1")
    # a known image set is resolved without reading the index (a damaged one is not seen)
    index = generated / "gen" / "nest-data-index.json"
    saved = index.read_bytes()
    index.write_text("not json")
    try:
        entry, root = nest_data.catalog().resolve_at("gen", imageset="nsd", subject=1,
                                                     roi="V1")
        assert entry.imageset == "nsd" and root.name == "gen"
        with pytest.raises(nest_data.IndexFormatError, match="nest-data index"):
            nest_data.open(imageset="my_stimuli", subject=1, roi="FFA-1", location="gen")
    finally:
        index.write_bytes(saved)


def test_index_image_sets_that_cannot_be_paths_are_ignored(tmp_path: Path) -> None:
    """An index is data from elsewhere: an image set that would leave the root is no key."""
    doc = {"format": "nest-data index", "version": "1.0", "stores": {
        "modality-fmri/x.zarr": {"keys": {"modality": "fmri", "train_dataset": "nsd",
                                          "model": "fwrf", "imageset": "../../etc",
                                          "subject": 1, "roi": "V1"},
                                 "nbytes": 1, "format_version": 3, "metadata_sha256": "x"}}}
    (tmp_path / "nest-data-index.json").write_text(json.dumps(doc))
    cat = nest_data.catalog()
    assert cat.at(str(tmp_path)) is cat
    with pytest.raises(nest_data.InputError, match="imageset='my stimuli': give a short name"):
        nest_data.generate(tmp_path, tmp_path, imageset="my stimuli", subject=1, roi="V1")


# ------------------------------------------------------------------------- image labels


def test_images_given_by_path_are_labelled_by_file_name(demo: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    images = test_images(3, 64, seed=12)
    paths = []
    for name, image in zip(("cat.jpg", "dog.png", "owl.png"), images, strict=True):
        Image.fromarray(image).save(tmp_path / name, quality=95)
        paths.append(tmp_path / name)
    da = nest_data.encode(paths, subject=1, roi="V1", location="demo")
    assert list(da.image.values) == ["cat.jpg", "dog.png", "owl.png"]
    by_pixels = nest_data.encode([np.asarray(Image.open(p).convert("RGB")) for p in paths],
                                 subject=1, roi="V1", location="demo")
    assert list(da.image_sha256.values) == list(by_pixels.image_sha256.values)
    named = nest_data.encode(paths, subject=1, roi="V1", location="demo",
                             image_ids=["a", "b", "c"])
    assert list(named.image.values) == ["a", "b", "c"] and "image_sha256" not in named.coords
    assert [h[:16] for h in by_pixels.image_sha256.values] == list(by_pixels.image.values)
    assert all(len(h) == 64 for h in da.image_sha256.values)
    np.testing.assert_array_equal(da.values, by_pixels.values)
    # two files of one name: the paths as given
    (tmp_path / "b").mkdir()
    Image.fromarray(images[0]).save(tmp_path / "b" / "cat.jpg", quality=95)
    twice = nest_data.encode([tmp_path / "cat.jpg", tmp_path / "b" / "cat.jpg"], subject=1,
                             roi="V1", location="demo")
    assert list(twice.image.values) == [str(tmp_path / "cat.jpg"),
                                        str(tmp_path / "b" / "cat.jpg")]
    # the command line prints the file names
    assert cli(["encode", str(paths[0]), str(paths[1]), "--subject", "1", "--roi", "V1",
                "--location", "demo"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("cat.jpg\t") and lines[1].startswith("dog.png\t")


@pytest.mark.parametrize("dtype", ["int64", "int32", "int16", "uint16", "int8", "uint32"])
def test_integer_images_of_any_integer_dtype_are_taken(demo: Path, dtype: str) -> None:
    images = test_images(2, 64, seed=13)
    if dtype == "int8":
        images = images // 2  # 0..127
    as_uint8 = nest_data.encode(images, subject=1, roi="V1", location="demo", cache=False)
    other = nest_data.encode(images.astype(dtype), subject=1, roi="V1", location="demo",
                             cache=False)
    np.testing.assert_array_equal(other.values, as_uint8.values)
    assert list(other.image.values) == list(as_uint8.image.values)  # same pixels, same hash


@pytest.mark.parametrize(("values", "match"), [
    (np.full((1, 8, 8, 3), 256, np.int64), "int64 values from 256 to 256 lie outside 0..255"),
    (np.full((1, 8, 8, 3), -1, np.int16), "int16 values from -1 to -1 lie outside 0..255"),
    (np.ones((1, 8, 8, 3), bool), "dtype is bool, not uint8"),
    (np.full((1, 8, 8, 3), 0.5), "dtype is float64, not uint8"),
])
def test_images_outside_0_255_are_refused(values: np.ndarray, match: str) -> None:
    from nest_data._images import as_images

    with pytest.raises(nest_data.InputError, match=rf"image 0: {match}\. Give uint8 RGB "
                                                   r"images \(or integers of any integer "
                                                   r"dtype in 0\.\.255\)"):
        as_images(values)


def test_generate_keeps_the_concept_of_things_like_folders(demo: Path, tmp_path: Path) -> None:
    folder = tmp_path / "things"
    images = test_images(4, 64, seed=14)
    for i, concept in enumerate(("aardvark", "aardvark", "zebra", "zebra")):
        (folder / concept).mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(folder / concept / f"{concept}_{i:02d}s.png")
    url = nest_data.generate(folder, tmp_path / "out", imageset="mine", subject=1, roi="V1",
                             location="demo")
    da = nest_data.open(imageset="mine", subject=1, roi="V1", location=str(tmp_path / "out"))
    assert nest_data.open_store(url).sizes == da.sizes
    assert list(da.concept.values) == ["aardvark", "aardvark", "zebra", "zebra"]
    assert list(da.image_id.values) == ["aardvark/aardvark_00s.png", "aardvark/aardvark_01s.png",
                                        "zebra/zebra_02s.png", "zebra/zebra_03s.png"]
    assert da.groupby("concept").mean("image").sizes["concept"] == 2
    flat = tmp_path / "flat"
    nest_data.synthetic.write_image_folder(flat, images[:2])
    url = nest_data.generate(flat, tmp_path / "out2", imageset="mine", subject=1, roi="V1",
                             location="demo")
    assert "concept" not in nest_data.open_store(url).coords  # no folders, no concepts


# --------------------------------------------------------------------- smaller things


def test_analysis_counts_vertices_and_voxels_in_words(demo: Path) -> None:
    ffa = nest_data.open(imageset="things", subject=1, roi="FFA-1",
                         train_dataset="nsd_fsaverage", location="demo")
    n = ffa.sizes["vertex"]
    assert nest_data.roi_mean(ffa).attrs["analysis"] == f"mean over {n} vertices"
    v1 = nest_data.open(imageset="things", subject=1, roi="V1", location="demo")
    assert nest_data.roi_mean(v1).attrs["analysis"] == "mean over 1350 voxels"
    one = v1.isel(voxel=[0])
    assert nest_data.roi_mean(one).attrs["analysis"] == "mean over 1 voxel"
    rsm = nest_data.rsm(ffa, ffa.image.values[:3])
    assert rsm.attrs["analysis"].endswith(f"over {n} vertices")


def test_synthetic_is_an_attribute_after_import() -> None:
    code = ("import sys, nest_data; assert 'nest_data.synthetic' not in sys.modules; "
            "print(nest_data.synthetic.test_images(2, 16).shape)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False, env={**os.environ, "PYTHONWARNINGS": "error"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "(2, 16, 16, 3)"
    assert "synthetic" in dir(nest_data)
    with pytest.raises(AttributeError, match="no attribute 'synthetik'"):
        nest_data.synthetik  # noqa: B018


def test_demo_says_which_subjects_it_holds(demo: Path) -> None:
    with pytest.raises(nest_data.StoreNotFoundError) as info:
        nest_data.open(imageset="things", subject=2, train_dataset="nsd_fsaverage",
                       location="demo")
    message = str(info.value)
    assert "the demo holds fmri/nsd_fsaverage/vit_b_32 stores of subject 1 only (on things)" \
        in message
    assert f"--subject {SURFACE_SUBJECT} --train-dataset nsd_fsaverage --location demo" \
        in message
    assert "run `nest-data demo`" not in message  # it is built


def test_misspelt_image_set_gets_a_suggestion() -> None:
    with pytest.raises(nest_data.UnknownKeyError,
                       match=r"unknown imageset 'thing' .*valid imageset values: imagenet_val, "
                             r"nsd, things\. Did you mean 'things'\?$"):
        nest_data.open(imageset="thing", subject=1, roi="V1", location="demo")
    with pytest.raises(nest_data.UnknownKeyError, match=r"Did you mean 'nsd'\?$"):
        nest_data.catalog().resolve(imageset="NSD1", subject=1, roi="V1")


def test_voxel_counts_are_known_for_subject_1_and_said_unknown_otherwise() -> None:
    df = nest_data.catalog().search(model="fwrf", imageset="nsd").df
    sub1 = df[df.subject == 1].set_index("roi").n_voxels
    assert sub1["V1"] == 1350 and sub1["lateral"] == 7799 and sub1.notna().all()
    assert df[df.subject > 1].n_voxels.isna().all()
    doc = " ".join((nest_data.Catalog.df.__doc__ or "").split())
    assert "**Unknown** (``<NA>``) for subjects 2-8" in doc


def test_demo_summary_names_the_encoder_it_used(demo: Path, tmp_path: Path) -> None:
    result = nest_data.run_demo(tmp_path, roi="FFA-1")
    assert ("Encoded 4 new images with sub-01's FFA-1 fwRF encoder: 4 x 484 voxels"
            in result.summary)
    assert "nest_data.encode(images, subject=1, roi='FFA-1', location='demo')" \
        in result.summary
    assert "roi='V1'" not in result.summary
    assert "Encoders on the demo: fMRI fwRF" in result.summary
