"""Every error says what was wrong, what is valid, and how to fix it."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import nest_data
from nest_data import (
    AmbiguousKeyError,
    LocationError,
    NestDataError,
    StoreNotFoundError,
    UnknownKeyError,
)
from nest_data._storage import make_store
from nest_data.converters import convert_ned, discover_ned
from nest_data.converters._pickle import load_npy_dict
from nest_data.errors import ConversionError, SourceFormatError
from nest_data.synthetic import ned_file_paths, write_ned


def test_exception_hierarchy(demo: Path) -> None:
    assert issubclass(UnknownKeyError, KeyError) and issubclass(UnknownKeyError, NestDataError)
    assert issubclass(StoreNotFoundError, FileNotFoundError)
    assert issubclass(AmbiguousKeyError, ValueError)
    assert issubclass(nest_data.InputError, ValueError)
    assert issubclass(nest_data.InputError, NestDataError)
    with pytest.raises(nest_data.InputError, match="k must be a positive number of images"):
        nest_data.top_images(nest_data.open(imageset="things", subject=1, roi="V1",
                                            location="demo"), k=0)


@pytest.mark.parametrize(("keys", "message"), [
    ({"imageset": "things", "subject": 1, "roi": "V7"},
     "unknown roi 'V7' for fmri/nsd/fwrf, fmri/nsd_fsaverage/vit_b_32; valid roi values: V1, "
     "V2, V3, hV4, EBA, FBA-2, OFA, FFA-1, FFA-2, PPA, RSC, OPA, OWFA, VWFA-1, VWFA-2, "
     "mfs-words, early, midventral, midlateral, midparietal, parietal, lateral, ventral, "
     "V1d, V1v, V2d, V2v, V3d, V3v, mTL-faces, aTL-faces, OVWFA, mTL-words, FBA-1, "
     "mTL-bodies."),
    ({"imageset": "things", "subject": 1, "roi": "FFA1"},
     "unknown roi 'FFA1' for fmri/nsd/fwrf, fmri/nsd_fsaverage/vit_b_32; valid roi values: "
     "V1, V2, V3, hV4, EBA, FBA-2, OFA, FFA-1, FFA-2, PPA, RSC, OPA, OWFA, VWFA-1, VWFA-2, "
     "mfs-words, early, midventral, midlateral, midparietal, parietal, lateral, ventral, "
     "V1d, V1v, V2d, V2v, V3d, V3v, mTL-faces, aTL-faces, OVWFA, mTL-words, FBA-1, "
     "mTL-bodies. Did you mean 'FFA-1'?"),
    ({"imageset": "things", "subject": 9, "roi": "V1"},
     "unknown subject 9 for fmri/nsd/fwrf; valid subject values: 1, 2, 3, 4, 5, 6, 7, 8."),
    ({"imageset": "coco", "subject": 1, "roi": "V1"},
     "unknown imageset 'coco' for fmri/nsd/fwrf, eeg/things_eeg_2/vit_b_32, "
     "fmri/nsd_fsaverage/vit_b_32; valid imageset "
     "values: imagenet_val, nsd, things."),
    ({"imageset": "things", "subject": 1, "model": "resnet"},
     "unknown model 'resnet'; valid model values: fwrf, vit_b_32."),
    ({"imageset": "things", "subject": 11, "modality": "eeg"},
     "unknown subject 11 for eeg/things_eeg_2/vit_b_32; valid subject values: 1, 2, 3, 4, 5, "
     "6, 7, 8, 9, 10."),
])
def test_unknown_values_list_valid_ones(keys: dict, message: str) -> None:
    with pytest.raises(UnknownKeyError) as err:
        nest_data.open(location="demo", **keys)
    assert str(err.value) == message


def test_missing_or_ambiguous_keys() -> None:
    with pytest.raises(AmbiguousKeyError) as err:
        nest_data.open(imageset="things", subject=1, location="demo")
    assert str(err.value).startswith("no roi= given: pass roi= for an fMRI entry (valid ROIs: ")
    assert str(err.value).endswith("), or modality='eeg' for an EEG entry, or "
                                   "train_dataset='nsd_fsaverage' for a whole cortical surface")
    with pytest.raises(AmbiguousKeyError, match=r"no roi= given: pass roi= for an fMRI entry "
                                                r"\(valid ROIs: .*\), or train_dataset="):
        nest_data.open(modality="fmri", imageset="things", subject=1, location="demo")
    with pytest.raises(AmbiguousKeyError, match="roi= is required for fmri/nsd/fwrf"):
        nest_data.open(model="fwrf", imageset="things", subject=1, location="demo")
    with pytest.raises(AmbiguousKeyError, match="subject= is required; valid values: 1, 2"):
        nest_data.open(imageset="things", roi="V1", location="demo")
    with pytest.raises(UnknownKeyError, match="the selected model has no ROIs .* drop roi="):
        nest_data.open(modality="eeg", imageset="things", subject=1, roi="V1", location="demo")
    with pytest.raises(UnknownKeyError, match="unknown catalog key\\(s\\) \\['sub'\\]"):
        nest_data.catalog().resolve(imageset="things", sub=1)


def test_no_location_configured() -> None:
    with pytest.raises(LocationError) as err:
        nest_data.open(imageset="things", subject=1, roi="V1")
    msg = str(err.value)
    assert "no location given" in msg and "NEST_DATA_ROOT" in msg and "nest-data demo" in msg


def test_unset_env_location(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NEST_DATA_ROOT", raising=False)
    with pytest.raises(LocationError, match="location 'local' reads its root from the "
                                            "environment variable NEST_DATA_ROOT, which is not "
                                            "set. Set it"):
        nest_data.open(imageset="things", subject=1, roi="V1", location="local")


def test_missing_store_says_where_and_how(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    monkeypatch.setenv("NEST_DATA_ROOT", str(tmp_path))
    with pytest.raises(StoreNotFoundError) as err:
        nest_data.open(imageset="things", subject=1, roi="V1")
    msg = str(err.value)
    expected = tmp_path / ("modality-fmri/train_dataset-nsd/model-fwrf/imageset-things/"
                           "sub-01_roi-V1.zarr")
    assert "no store for fmri/nsd/fwrf things sub-01 V1 at location 'local'" in msg
    assert f"looked for the folder {expected}" in msg
    assert "set NEST_DATA_ROOT" in msg and "nest-data convert ned SRC DEST" in msg
    assert "nest-data demo" in msg


def test_missing_demo_says_build_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NEST_DATA_CACHE_DIR", str(tmp_path))
    with pytest.raises(StoreNotFoundError, match="at location 'demo'.*run `nest-data demo`"):
        nest_data.open(imageset="things", subject=1, roi="V1", location="demo")


def test_unused_storage_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(LocationError, match="storage options \\['anon'\\] were given for the "
                                            "local path .* drop them or give a remote URL"):
        make_store(tmp_path, {"anon": True})
    with pytest.raises(LocationError, match="have no use"):
        nest_data.open(imageset="things", subject=1, roi="V1", location=str(tmp_path),
                       storage_options={"anon": True})


def test_cli_reports_errors_without_traceback(capsys: pytest.CaptureFixture[str],
                                              tmp_path: Path) -> None:
    from nest_data._cli import main

    assert main(["convert", "ned", str(tmp_path / "nope"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nest-data: error: NED source folder") and "does not exist" in err
    (tmp_path / "empty").mkdir()
    assert main(["convert", "ned", str(tmp_path / "empty"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "no NED response files under" in err and "Check SRC" in err
    assert main(["verify", str(tmp_path / "empty")]) == 2
    assert "no nest-data stores under" in capsys.readouterr().err


# ------------------------------------------------------------------ NED source files

def _unique_id_without_3(labels: dict) -> None:
    del labels["unique_id"][3]


def _image_paths_with_extra_key(labels: dict) -> None:
    labels["image_paths"]["extra"] = "aardvark/aardvark_99b.jpg"


def _label_names_without_0(labels: dict) -> None:
    del labels["label_names"][0]


def _concept_index_out_of_range(labels: dict) -> None:
    labels["image_concept_index"][5] = 50


def _negative_label_number(labels: dict) -> None:
    labels["label_number"][[2, 7]] = -1


def _fractional_concept_index(labels: dict) -> None:
    index = labels["image_concept_index"].astype(np.float64)
    index[4] = 2.5
    labels["image_concept_index"] = index


@pytest.mark.parametrize(("imageset", "edit", "message"), [
    ("things", _unique_id_without_3,
     "things_labels.unique_id is a dict of 49 entries whose keys must be the row numbers 0..48 "
     "(NED keys such tables by row), but it lacks the keys [3] and has the keys [49] instead. "
     "Re-download the file, or rewrite things_labels.unique_id with the keys 0..48."),
    ("things", _image_paths_with_extra_key,
     "things_labels.image_paths is a dict of 31 entries whose keys must be the row numbers "
     "0..30 (NED keys such tables by row), but it lacks the keys [30] and has the keys "
     "['extra'] instead. Re-download the file, or rewrite things_labels.image_paths with the "
     "keys 0..30."),
    ("imagenet_val", _label_names_without_0,
     "imagenet_val_labels.label_names is a dict of 999 entries whose keys must be the row "
     "numbers 0..998 (NED keys such tables by row), but it lacks the keys [0] and has the keys "
     "[999] instead. Re-download the file, or rewrite imagenet_val_labels.label_names with "
     "the keys 0..998."),
    ("things", _concept_index_out_of_range,
     "things_labels.image_concept_index is 50 at row 5, but things_labels.unique_id has 50 "
     "entries, so valid indices are 0..49. The two fields do not belong together: "
     "re-download the file."),
    ("imagenet_val", _negative_label_number,
     "imagenet_val_labels.label_number is -1 at row 2 (and 1 more row out of range), but "
     "imagenet_val_labels.label_names has 1000 entries, so valid indices are 0..999. The two "
     "fields do not belong together: re-download the file."),
    ("things", _fractional_concept_index,
     "things_labels.image_concept_index must hold integer indices, but it has 2.5 at row 4; "
     "the file is damaged or not NED's: re-download it."),
])
def test_bad_label_fields_are_named(ned_src: Path, tmp_path: Path, imageset: str,
                                    edit: Callable[[dict], None], message: str) -> None:
    h5, npy = ned_file_paths(ned_src, "fmri", imageset, 1, "V1")
    new_h5, new_npy = ned_file_paths(tmp_path / "src", "fmri", imageset, 1, "V1")
    new_h5.parent.mkdir(parents=True)
    shutil.copy(h5, new_h5)
    meta = load_npy_dict(npy)
    edit(meta[f"{imageset}_labels"])
    np.save(new_npy, np.asarray(meta, dtype=object), allow_pickle=True)
    with pytest.raises(ConversionError) as err:
        convert_ned(tmp_path / "src", tmp_path / "dest", workers=1)
    assert f"\n  fmri/nsd/fwrf {imageset} sub-01 V1: {new_npy}: {message}\n" in str(err.value)


def test_old_file_name_must_agree_with_its_folder(tmp_path: Path) -> None:
    write_ned(tmp_path, modalities=["eeg"], subjects=[1], imagesets=["things"], n_images=2,
              names="old", show_progress=False)
    h5, _ = ned_file_paths(tmp_path, "eeg", "things", 1, names="old")
    moved = h5.parent.with_name("imageset-nsd") / h5.name
    moved.parent.mkdir()
    h5.rename(moved)
    with pytest.raises(SourceFormatError) as err:
        discover_ned(tmp_path)
    assert str(err.value) == (
        f"{moved}: the file name says imageset 'things' but its folder says imageset 'nsd'. A "
        "file in modality-M/train_dataset-D/model-X/imageset-S/ must be named "
        "synthetic_neural_responses_sub-SS[_roi-R].h5 or (NED's name before 2024-05-26) "
        "synthetic_neural_responses_training_dataset-D_model-X_imageset-S_sub-SS[_roi-R].h5. "
        "Move the file to the folder its name gives, or rename it.")


def test_one_entry_under_both_file_names(tmp_path: Path) -> None:
    kw = {"modalities": ["fmri"], "subjects": [1], "rois": ["V1"], "imagesets": ["nsd"],
          "n_images": 2, "show_progress": False}
    write_ned(tmp_path, names="old", **kw)
    write_ned(tmp_path, **kw)
    new, _ = ned_file_paths(tmp_path, "fmri", "nsd", 1, "V1")
    old, _ = ned_file_paths(tmp_path, "fmri", "nsd", 1, "V1", names="old")
    with pytest.raises(SourceFormatError) as err:
        convert_ned(tmp_path, tmp_path / "dest", workers=1)
    assert str(err.value) == (
        f"{new.parent}: two files hold the same entry: {new.name} and {old.name} (NED's file "
        "names before and after its 2024-05-26 rename). Keep one of them, with its metadata "
        ".npy, and remove the other.")
    assert not (tmp_path / "dest" / "modality-fmri").exists()


def test_missing_object_message(demo: Path) -> None:
    from nest_data.errors import MissingObjectError

    assert issubclass(MissingObjectError, FileNotFoundError)
    store = demo / nest_data.catalog().resolve(imageset="nsd", subject=2, roi="V2").path
    chunk = store / "responses" / "c" / "0" / "0"
    original = chunk.read_bytes()
    chunk.unlink()
    try:
        with pytest.raises(MissingObjectError) as err:
            _ = nest_data.open_store(store).values
        assert str(err.value) == (
            f"object responses/c/0/0 of {store} (images 0-23) is missing: the store's manifest "
            "lists it, so it was written and has since been deleted or not copied completely. "
            "Nothing is read as a fill value in its place. Re-mirror or re-convert this entry, "
            "and run `nest-data verify` on its root to find other damage.")
    finally:
        chunk.write_bytes(original)


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"chunks": "auto"}, "InputError", "chunks='auto' is not a dict; give a dict of dimension "
                                       "-> chunk size, e.g. chunks={'image': 4096}"),
    ({"chunks": 5}, "InputError", "chunks=5 is not a dict"),
    ({"chunks": [1, 2]}, "InputError", "chunks=[1, 2] is not a dict"),
    ({"chunks": {"image": -3}}, "InputError", "the size for 'image' is -3; give a dict"),
    ({"chunks": {"image": "x"}}, "InputError", "the size for 'image' is 'x'; give a dict"),
    ({"chunks": {"bogus": 2}}, "InputError", "chunks= names ['bogus'], which are not "
                                             "dimensions of"),
    ({"storage_options": "anon"}, "InputError", "storage_options= (a str) is not a dict; "
                                                "give a dict of fsspec options"),
    ({"location": 5}, "LocationError", "location=5 is not a name, folder or URL; give a "
                                       "location name (demo, local)"),
])
def test_bad_open_arguments_are_our_errors(demo: Path, kwargs: dict, error: str,
                                           message: str) -> None:
    keys = {"imageset": "things", "subject": 1, "roi": "V1", "location": "demo", **kwargs}
    with pytest.raises(getattr(nest_data, error)) as err:
        nest_data.open(**keys)
    assert message in str(err.value)


def test_bad_roots_and_catalogs_are_our_errors(tmp_path: Path) -> None:
    with pytest.raises(nest_data.LocationError, match="unknown protocol 'foo' in 'foo://x/y'"):
        nest_data.verify("foo://x/y")
    with pytest.raises(nest_data.RemoteReadError, match=r"cannot reach http://127\.0\.0\.1:1/x "
                                                        r"\(ClientConnectorError"):
        nest_data.verify("http://127.0.0.1:1/x")
    user = tmp_path / "u.yaml"
    user.write_text("locations: [a, b]\n")
    with pytest.raises(nest_data.CatalogError, match="'locations' must map names to URLs"):
        nest_data.catalog(user)
