"""The catalog: vocabulary, search, table, locations, merging, intake-esm export."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import nest_data
from nest_data import Catalog, Root
from nest_data.errors import AmbiguousKeyError, CatalogError, LocationError, UnknownKeyError


def test_whole_collection_is_described() -> None:
    cat = nest_data.catalog()
    assert cat.version == "1.1.0"
    # fwRF: 8 subjects x 23 ROIs; EEG: 10 subjects; fsaverage: 8 subjects x (31 ROIs + the
    # whole surface), every one on 3 image sets.
    assert len(cat) == 8 * 23 * 3 + 10 * 3 + 8 * 32 * 3
    assert cat.vocabulary("modality") == ["eeg", "fmri"]
    assert cat.vocabulary("imageset") == ["imagenet_val", "nsd", "things"]
    assert {m.name: len(m.rois) for m in cat.models} == {
        "fmri/nsd/fwrf": 23, "eeg/things_eeg_2/vit_b_32": 0, "fmri/nsd_fsaverage/vit_b_32": 31}
    assert cat.vocabulary("subject") == list(range(1, 11))
    # A surface model's ROIs and its whole surface share one store per image set and subject.
    surface = cat.search(train_dataset="nsd_fsaverage", imageset="nsd", subject=2)
    assert len(surface) == 32 and {e.path for e in surface} == {
        "modality-fmri/train_dataset-nsd_fsaverage/model-vit_b_32/imageset-nsd/sub-02.zarr"}
    sizes = {k: v["n_images"] for k, v in cat.imagesets.items()}
    assert sizes == {"nsd": 73000, "imagenet_val": 50000, "things": 26107}
    entry = cat.resolve(imageset="nsd", subject=1, roi="lateral")
    assert entry.path == ("modality-fmri/train_dataset-nsd/model-fwrf/imageset-nsd/"
                          "sub-01_roi-lateral.zarr")
    assert cat.resolve(modality="eeg", imageset="things", subject=10).path == (
        "modality-eeg/train_dataset-things_eeg_2/model-vit_b_32/imageset-things/sub-10.zarr")


def test_search_and_df() -> None:
    cat = nest_data.catalog()
    sub = cat.search(roi="V1", subject=[1, 2])
    assert len(sub) == 6 and all(e.roi == "V1" for e in sub)
    assert {e.subject for e in sub} == {1, 2}
    df = sub.df
    assert isinstance(df, pd.DataFrame) and len(df) == 6
    assert list(df.columns) == ["modality", "train_dataset", "model", "imageset", "subject",
                                "roi", "path", "dims", "n_images", "n_voxels"]
    row = df[(df.subject == 1) & (df.imageset == "things")].iloc[0]
    assert row.n_voxels == 1350 and row.n_images == 26107 and row.dims == "image,voxel"
    assert pd.isna(df[df.subject == 2].n_voxels).all()  # not published
    eeg = cat.search(modality="eeg", imageset=["nsd", "things"])
    assert len(eeg) == 20 and set(eeg.df.roi.isna()) == {True}
    assert len(cat.search(roi="v1", subject="sub-01")) == 3  # case and spelling forgiven
    assert [e.label for e in cat.search(roi="OFA", subject=3, imageset="nsd")] == [
        "fmri/nsd/fwrf nsd sub-03 OFA", "fmri/nsd_fsaverage/vit_b_32 nsd sub-03 OFA"]


def test_resolve_infers_model_keys() -> None:
    cat = nest_data.catalog()
    e = cat.resolve(imageset="things", subject="03", roi="FFA-1")
    assert (e.modality, e.train_dataset, e.model, e.subject) == ("fmri", "nsd", "fwrf", 3)
    e = cat.resolve(imageset="things", subject=3, model="vit_b_32", modality="eeg")
    assert e.modality == "eeg" and e.roi is None
    # FFA-1 exists in the fwRF and the fsaverage model: fwRF is the default, train_dataset=
    # picks the surface; an ROI only the surface has (V1v) picks it by itself.
    e = cat.resolve(imageset="things", subject=3, roi="FFA-1", train_dataset="nsd_fsaverage")
    assert (e.model, e.roi, e.path) == (
        "vit_b_32", "FFA-1",
        "modality-fmri/train_dataset-nsd_fsaverage/model-vit_b_32/imageset-things/sub-03.zarr")
    assert cat.resolve(imageset="things", subject=3, roi="V1v").train_dataset == "nsd_fsaverage"
    whole = cat.resolve(imageset="nsd", subject=8, train_dataset="nsd_fsaverage")
    assert whole.roi is None and whole.dims == ("image", "vertex")
    with pytest.raises(AmbiguousKeyError, match="the keys match several models: "
                                                "eeg/things_eeg_2/vit_b_32, "
                                                "fmri/nsd_fsaverage/vit_b_32; pass modality="):
        cat.resolve(imageset="things", subject=3, model="vit_b_32")
    with pytest.raises(UnknownKeyError, match="unknown roi 'V1' for fmri/nsd_fsaverage/vit_b_32; "
                                              "valid roi values: V1d, V1v, .* Did you mean"):
        cat.resolve(imageset="things", subject=3, roi="V1", train_dataset="nsd_fsaverage")


def test_locations(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cat = nest_data.catalog()
    assert cat.location("demo") == Root(str(nest_data._demo.demo_root()), {}, "demo")
    monkeypatch.setenv("NEST_DATA_ROOT", str(tmp_path))
    assert cat.location(None) == Root(str(tmp_path), {}, "local")
    monkeypatch.setenv("NEST_DATA_LOCATION", "demo")
    assert cat.location(None).name == "demo"
    cat.add_location("lab", "s3://lab-bucket/nest", {"anon": True})
    assert cat.location("lab") == Root("s3://lab-bucket/nest", {"anon": True}, "lab")
    # options given with the name are merged over the location's own
    assert cat.location("lab", {"anon": False, "key": "k"}).storage_options == {
        "anon": False, "key": "k"}
    assert cat.location("/data/x").url == "/data/x"
    entry = cat.resolve(imageset="things", subject=1, roi="V1")
    assert cat.location("lab").store(entry) == f"s3://lab-bucket/nest/{entry.path}"
    (tmp_path / "stores").mkdir()
    monkeypatch.chdir(tmp_path)
    assert cat.location("stores") == Root("stores", {}, "stores")  # an existing folder
    with pytest.raises(LocationError, match="unknown location 'lba'; valid locations: demo, "
                                            "lab, local, .* Did you mean 'lab'\\?"):
        cat.location("lba")


def test_merge_user_yaml(tmp_path: Path) -> None:
    user = tmp_path / "lab.yaml"
    user.write_text("""
locations:
  lab:
    url: gs://my-lab/nest
    storage_options: {token: anon}
imagesets:
  my_images: {n_images: 500}
models:
  - modality: fmri
    train_dataset: nsd
    model: vit_linear
    subjects: [1, 2]
    rois: [V1]
    imagesets: [my_images]
    path: "mine/{imageset}/sub-{subject:02d}_{roi}.zarr"
    dims: [image, voxel]
""")
    cat = nest_data.catalog(user)
    assert cat.locations["lab"].storage_options == {"token": "anon"}
    assert len(cat) == 1350 + 2
    mine = cat.search(model="vit_linear")
    assert [e.path for e in mine] == ["mine/my_images/sub-01_V1.zarr",
                                      "mine/my_images/sub-02_V1.zarr"]
    # Two fMRI models now: the image set tells them apart, or the model key does.
    assert cat.resolve(imageset="my_images", subject=1, roi="V1").model == "vit_linear"
    assert cat.resolve(imageset="nsd", subject=1, roi="V1").model == "fwrf"
    both = Path(tmp_path / "both.yaml")
    both.write_text(user.read_text().replace("[my_images]", "[my_images, nsd]"))
    # An ROI of several models means the catalog's default model (fwRF) unless named.
    assert nest_data.catalog(both).resolve(imageset="nsd", subject=1, roi="V1").model == "fwrf"
    assert nest_data.catalog(both).resolve(imageset="nsd", subject=1, roi="V1",
                                           model="vit_linear").path == "mine/nsd/sub-01_V1.zarr"


def test_env_catalogs_and_bad_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = tmp_path / "a.yaml"
    good.write_text("locations:\n  mirror: /mnt/nest\n")
    monkeypatch.setenv("NEST_DATA_CATALOGS", str(good))
    assert nest_data.catalog().locations["mirror"].url == "/mnt/nest"
    bad = tmp_path / "b.yaml"
    bad.write_text("modelz: []\n")
    with pytest.raises(CatalogError, match="unknown top-level keys \\['modelz'\\]; valid keys"):
        Catalog.from_yaml(bad)
    bad.write_text("models:\n  - {modality: fmri}\n")
    with pytest.raises(CatalogError, match="missing \\['dims', 'imagesets', 'model', 'path'"):
        Catalog.from_yaml(bad)
    bad.write_text("locations: {x: {storage_options: {}}}\n")
    with pytest.raises(CatalogError, match="location 'x' needs a 'url'"):
        Catalog.from_yaml(bad)
    bad.write_text("a: [\n")
    with pytest.raises(CatalogError, match="not valid YAML"):
        Catalog.from_yaml(bad)


def test_intake_esm_export_opens_same_values(collection: Path, tmp_path: Path) -> None:
    intake_esm = pytest.importorskip("intake_esm")
    cat = nest_data.catalog().search(imageset="things", subject=[1, 2], roi=["V1", "FFA-1"],
                                     model="fwrf")
    cat.add_location("mini", str(collection))
    spec = cat.to_intake_esm(tmp_path, location="mini", name="mini")
    assert spec.name == "mini.json" and (tmp_path / "mini.csv").is_file()
    esm = intake_esm.esm_datastore(str(spec))
    assert len(esm.df) == 4
    hit = esm.search(subject="2", roi="FFA-1")  # intake-esm reads every column as text
    assert len(hit.df) == 1
    datasets = hit.to_dataset_dict(xarray_open_kwargs={"consolidated": True, "chunks": {}},
                                   progressbar=False)
    (ds,) = datasets.values()
    ours = nest_data.open(imageset="things", subject=2, roi="FFA-1", location=str(collection))
    np.testing.assert_array_equal(ds["responses"].values, ours.values)
    np.testing.assert_array_equal(ds["ncsnr"].values, ours.ncsnr.values)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("path", "../victim/{roi}.zarr", "leaves its location's root"),
    ("path", "/abs/{roi}.zarr", "leaves its location's root"),
    ("path", "s3://elsewhere/{roi}.zarr", "leaves its location's root"),
    ("weights_path", "~/w/{roi}", "leaves its location's root"),
    ("path", "x/{bogus_field}.zarr", "uses {bogus_field}, which is not a catalog key; valid: "
                                     "{modality}, {train_dataset}"),
    ("path", "x/{imageset:02d}.zarr", "cannot be filled in"),
    ("rois", ["../../victim"], "which cannot be part of a path"),
])
def test_user_catalog_paths_stay_inside_their_root(tmp_path: Path, field: str, value: object,
                                                   message: str) -> None:
    import yaml

    model = {"modality": "fmri", "train_dataset": "nsd", "model": "evil", "subjects": [1],
             "rois": ["V1"], "imagesets": ["nsd"], "path": "evil/{roi}.zarr",
             "dims": ["image", "voxel"], field: value}
    user = tmp_path / "evil.yaml"
    user.write_text(yaml.safe_dump({"models": [model]}))
    with pytest.raises(CatalogError, match=f"catalog {user}: model 'evil' .*"
                                           + re.escape(message)):
        nest_data.catalog(user)
