"""Opening many entries: round trips per collection, not per entry, with the same checks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import nest_data
from nest_data import _open
from nest_data.errors import MissingObjectError, StoreNotFoundError

from .servers import HTTPServer

MANY = {"imageset": "nsd", "subject": [1, 2], "roi": ["V1", "FFA-1", "lateral"]}
LATENCY = 0.05  # seconds added to every request: concurrent requests overlap for sure


@pytest.fixture(scope="module")
def served(collection: Path) -> Iterator[HTTPServer]:
    with HTTPServer(latency=LATENCY) as server:
        server.upload(collection)
        yield server


def _labels(store: Path) -> list[str]:
    """The label arrays of a store (every root array but ``responses``)."""
    meta = json.loads((store / "zarr.json").read_text())["consolidated_metadata"]["metadata"]
    return sorted(k for k, v in meta.items()
                  if "/" not in k and v["node_type"] == "array" and k != "responses")


def _assert_same_tree(got: xr.DataTree, expected: xr.DataTree) -> None:
    assert sorted(n.path for n in got.leaves) == sorted(n.path for n in expected.leaves)
    for leaf in expected.leaves:
        xr.testing.assert_identical(got[leaf.path].to_dataset().compute(),
                                    leaf.to_dataset().compute())


def test_one_remote_entry_is_two_round_trips(served: HTTPServer, collection: Path) -> None:
    """The root ``zarr.json``, then every label at once: two round trips, one request per
    object, and the values of the local store."""
    entry = nest_data.catalog().resolve(imageset="nsd", subject=1, roi="V1")
    labels = _labels(collection / entry.path)
    served.reset()
    served.gather(2, len(labels))  # the labels wait for each other: sent together, all in flight
    try:
        da = nest_data.open(imageset="nsd", subject=1, roi="V1", location=served.url)
    finally:
        served.gather()
    paths = [r.path.split(".zarr/", 1)[1] for r in served.requests]
    assert paths[0] == "zarr.json"
    assert sorted(paths[1:]) == sorted(f"{name}/c/0" for name in labels)
    assert served.peak_in_flight == len(labels)  # the labels were all in flight together
    xr.testing.assert_identical(
        da.compute(), nest_data.open(imageset="nsd", subject=1, roi="V1",
                                     location=str(collection)).compute())


def test_open_many_opens_entries_concurrently(served: HTTPServer, collection: Path) -> None:
    """Every entry costs its two round trips, and the entries overlap: the server answers
    requests of several entries at once; the tree is the local one, value for value."""
    n = len(MANY["subject"]) * len(MANY["roi"])
    per_entry = [1 + len(_labels(collection / e.path)) for e in
                 nest_data.catalog().search(model="fwrf", **MANY)]
    served.reset()
    tree = nest_data.open_many(location=served.url, **MANY)
    requests = served.requests
    assert len(requests) == sum(per_entry)
    assert sum(r.path.endswith(".zarr/zarr.json") for r in requests) == n
    assert served.peak_in_flight > max(per_entry)  # more than one entry's labels at once
    _assert_same_tree(tree, nest_data.open_many(location=str(collection), **MANY))


def test_open_many_keeps_the_bound_on_requests_in_flight(
        served: HTTPServer, monkeypatch: pytest.MonkeyPatch, collection: Path) -> None:
    """With one store at a time, no more than one store's requests are ever in flight."""
    monkeypatch.setattr(_open, "OPEN_CONCURRENCY", 1)
    biggest = max(len(_labels(collection / e.path))
                  for e in nest_data.catalog().search(model="fwrf", **MANY))
    served.reset()
    nest_data.open_many(location=served.url, **MANY)
    assert served.peak_in_flight <= biggest
    monkeypatch.setattr(_open, "OPEN_CONCURRENCY", 2)
    served.reset()
    nest_data.open_many(location=served.url, **MANY)
    assert biggest < served.peak_in_flight <= 2 * biggest


def test_open_many_names_the_missing_entry(collection: Path, tmp_path: Path) -> None:
    """One absent store among many is an error naming that entry and where it looked."""
    root = tmp_path / "root"
    entry = nest_data.catalog().resolve(imageset="nsd", subject=2, roi="FFA-1")
    for e in nest_data.catalog().search(model="fwrf", **MANY):
        if e != entry:
            (root / e.path).parent.mkdir(parents=True, exist_ok=True)
            (root / e.path).symlink_to(collection / e.path)
    with pytest.raises(StoreNotFoundError, match=r"no store for fmri/nsd/fwrf nsd sub-02 FFA-1 "
                                                 r"at location .*looked for the folder"):
        nest_data.open_many(location=str(root), **MANY)


def test_open_many_keeps_the_label_checks(served: HTTPServer, collection: Path) -> None:
    """A label object the manifest lists and the server lacks fails the whole open."""
    entry = nest_data.catalog().resolve(imageset="nsd", subject=2, roi="V1")
    served.remove(f"{entry.path}/ncsnr/c/0")
    try:
        with pytest.raises(MissingObjectError, match="object ncsnr/c/0 of .*sub-02_roi-V1"):
            nest_data.open_many(location=served.url, **MANY)
    finally:
        served.upload(collection)


def test_open_collection_opens_what_the_location_holds(collection: Path) -> None:
    """Every store the location holds, one leaf each, at modality/.../sub-NN[/ROI]."""
    tree = nest_data.open_collection(location=str(collection))
    present = nest_data.catalog().search(location=str(collection))
    assert sorted(n.path.lstrip("/") for n in tree.leaves) == sorted(
        _open._node(e) for e in present)
    assert len(present) == 3 * 2 * 3 + 3  # fMRI: image sets x subjects x ROIs; EEG: 3
    xr.testing.assert_identical(
        tree["fmri/nsd/fwrf/things/sub-02/lateral"].responses.compute(),
        nest_data.open(imageset="things", subject=2, roi="lateral",
                       location=str(collection)).compute())
    eeg = tree["eeg/things_eeg_2/vit_b_32/nsd/sub-01"].responses
    assert eeg.dims == ("image", "repetition", "channel", "time")
    things = nest_data.open_collection(location=str(collection), imageset="things",
                                       roi=["V1"])
    assert sorted(n.path for n in things.leaves) == [
        "/fmri/nsd/fwrf/things/sub-01/V1", "/fmri/nsd/fwrf/things/sub-02/V1"]


def test_open_collection_over_http_reads_the_index_once(served: HTTPServer,
                                                        collection: Path) -> None:
    """What an HTTP location holds is its index: one request, then the stores' own."""
    if not (collection / "nest-data-index.json").is_file():
        pytest.fail("the converted collection has no index")
    served.reset()
    tree = nest_data.open_collection(location=served.url, imageset="nsd", subject=1)
    requests = served.requests
    assert [r.path.rsplit("/", 1)[-1] for r in requests].count("nest-data-index.json") == 1
    assert not any(r.status == 404 for r in requests)  # no probing for absent stores
    assert len(list(tree.leaves)) == 4  # three ROIs and EEG
    np.testing.assert_array_equal(
        tree["fmri/nsd/fwrf/nsd/sub-01/V1"].responses.values,
        nest_data.open(imageset="nsd", subject=1, roi="V1", location=str(collection)).values)


def test_open_collection_says_when_nothing_is_there(collection: Path) -> None:
    with pytest.raises(StoreNotFoundError, match=r"holds no store for subject=5.*search\("
                                                 r"location="):
        nest_data.open_collection(location=str(collection), subject=5)
