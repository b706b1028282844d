"""Every error says what was wrong, what is valid, and how to fix it."""

from __future__ import annotations

from pathlib import Path

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
     "unknown roi 'V7' for fmri/nsd/fwrf; valid roi values: V1, V2, V3, hV4, EBA, FBA-2, OFA, "
     "FFA-1, FFA-2, PPA, RSC, OPA, OWFA, VWFA-1, VWFA-2, mfs-words, early, midventral, "
     "midlateral, midparietal, parietal, lateral, ventral."),
    ({"imageset": "things", "subject": 1, "roi": "FFA1"},
     "unknown roi 'FFA1' for fmri/nsd/fwrf; valid roi values: V1, V2, V3, hV4, EBA, FBA-2, "
     "OFA, FFA-1, FFA-2, PPA, RSC, OPA, OWFA, VWFA-1, VWFA-2, mfs-words, early, midventral, "
     "midlateral, midparietal, parietal, lateral, ventral. Did you mean 'FFA-1'?"),
    ({"imageset": "things", "subject": 9, "roi": "V1"},
     "unknown subject 9 for fmri/nsd/fwrf; valid subject values: 1, 2, 3, 4, 5, 6, 7, 8."),
    ({"imageset": "coco", "subject": 1, "roi": "V1"},
     "unknown imageset 'coco' for fmri/nsd/fwrf, eeg/things_eeg_2/vit_b_32; valid imageset "
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
    with pytest.raises(AmbiguousKeyError, match="no roi= given: pass roi= for an fMRI entry "
                                                r"\(valid ROIs: .*\) or modality='eeg'"):
        nest_data.open(imageset="things", subject=1, location="demo")
    with pytest.raises(AmbiguousKeyError, match="roi= is required for fmri/nsd/fwrf"):
        nest_data.open(modality="fmri", imageset="things", subject=1, location="demo")
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
