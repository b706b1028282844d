"""A location knows what it holds: the index every writer keeps, its rebuild and its checks."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import fsspec
import pytest

import nest_data
from nest_data import _index, _locks
from nest_data._cli import main
from nest_data._digest import bytes_digest
from nest_data._format import FORMAT_VERSION
from nest_data._index import (
    INDEX_FILE,
    LOCK_FILE,
    existing_paths,
    find_stores,
    list_stores,
    read_index,
    write_index,
)
from nest_data._staging import commit, store_exists
from nest_data.converters import convert_ned
from nest_data.errors import IndexFormatError, IndexLockError, IndexVersionError, LocationError

from .servers import HTTPServer, S3Server

V1 = "modality-fmri/train_dataset-nsd/model-fwrf/imageset-things/sub-01_roi-V1.zarr"


def _copy(root: Path, dest: Path) -> Path:
    return Path(shutil.copytree(root, dest))


def _expected(root: Path) -> dict[str, dict]:
    """What the index must say of every store under a local root, read off the files."""
    out = {}
    for store in find_stores(root):
        raw = (store / "zarr.json").read_bytes()
        attrs = json.loads(raw)["attributes"]["nest_data"]
        out[store.relative_to(root).as_posix()] = {
            "keys": attrs["keys"], "nbytes": sum(p.stat().st_size for p in store.rglob("*")
                                                 if p.is_file()),
            "format_version": attrs["format_version"], "metadata_sha256": bytes_digest(raw)}
    return out


def _as_dicts(index: _index.Index) -> dict[str, dict]:
    return {p: vars(r) for p, r in index.stores.items()}


def _problems(report: nest_data._verify.VerifyReport) -> list[str]:
    return sorted(str(p) for p in report.problems)


# ------------------------------------------------------------------ what writers record


def test_convert_records_every_store(collection: Path, tmp_path: Path) -> None:
    index = read_index(collection)
    assert index is not None
    expected = _expected(collection)
    assert len(expected) == 21  # fMRI: 2 subjects x 3 ROIs x 3 image sets; EEG: 3
    assert _as_dicts(index) == expected
    record = index.stores["modality-fmri/train_dataset-nsd/model-fwrf/imageset-nsd/"
                          "sub-02_roi-FFA-1.zarr"]
    assert record.keys == {"modality": "fmri", "train_dataset": "nsd", "model": "fwrf",
                           "imageset": "nsd", "subject": 2, "roi": "FFA-1"}
    assert record.format_version == FORMAT_VERSION and record.nbytes > 1000
    # the object is JSON naming its format and version, with no storage options
    doc = json.loads((collection / INDEX_FILE).read_bytes())
    assert doc["format"] == "nest-data index" and doc["version"] == "1.0"
    # a rebuild from the files says the same
    copy = _copy(collection, tmp_path / "copy")
    (copy / INDEX_FILE).unlink()
    rebuilt = nest_data.build_index(copy, show_progress=False)
    assert _as_dicts(rebuilt) == expected
    assert (copy / INDEX_FILE).read_bytes() == (collection / INDEX_FILE).read_bytes()


def test_demo_records_its_stores_not_its_weights(demo: Path) -> None:
    index = read_index(demo)
    assert index is not None
    assert _as_dicts(index) == _expected(demo)
    assert len(index.stores) > 500
    assert not any(p.startswith("weights/") for p in index.stores)  # weights are no stores
    if any(demo.glob("weights/**/model.json")):  # with torch: the generated surface store
        surface = [r for r in index.stores.values() if r.keys["model"] == "vit_b_32"
                   and r.keys["modality"] == "fmri"]
        assert [(r.keys["imageset"], r.keys["subject"]) for r in surface] == [("things", 1)]


def test_first_commit_indexes_what_was_there(collection: Path, ned_src: Path, tmp_path: Path
                                             ) -> None:
    """A root written before the index existed keeps working, and its next write indexes it
    whole, so the index never hides the stores that were there before it."""
    copy = _copy(collection, tmp_path / "old")
    (copy / INDEX_FILE).unlink()
    victim = copy / V1
    shutil.rmtree(victim)
    assert existing_paths(copy) == set(_expected(copy))  # from a walk
    assert nest_data.verify(copy).ok
    convert_ned(ned_src, copy, imageset="things", subject=1, roi="V1", workers=1)
    index = read_index(copy)
    assert index is not None and _as_dicts(index) == _expected(copy) and V1 in index.stores


# ------------------------------------------------------------------ existence for readers


def test_search_and_export_list_only_what_exists(demo: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    cat = nest_data.catalog()
    everything = cat.search(roi="FFA-1")
    here = cat.search(roi="FFA-1", location="demo")
    expected = sorted(e.label for e in everything if store_exists(demo, e.path))
    assert sorted(e.label for e in here) == expected
    assert len(here) == 25 and len(everything) > len(here)
    with pytest.raises(nest_data.InputError, match="give location= too"):
        cat.search(roi="FFA-1", storage_options={"anon": True})
    spec = everything.to_intake_esm(tmp_path, location="demo", name="ffa")
    rows = (tmp_path / "ffa.csv").read_text().splitlines()[1:]
    assert spec.name == "ffa.json" and len(rows) == 25
    assert all(Path(r.split(",")[-2].removeprefix("file://"), "zarr.json").is_file()
               for r in rows)
    assert main(["catalog", "--roi", "FFA-1", "--location", "demo"]) == 0
    assert "25 entries at demo;" in capsys.readouterr().out


def test_mirror_copies_what_exists_and_names_the_rest(demo: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    wanted = nest_data.catalog().search(roi="FFA-1")
    surface_paths = {e.path for e in wanted if e.model == "vit_b_32"}
    absent = sorted(e.label for e in {e.path: e for e in wanted}.values()
                    if not store_exists(demo, e.path))
    assert main(["mirror", str(tmp_path), "--location", "demo", "--roi", "FFA-1"]) == 0
    out = capsys.readouterr().out
    assert f"{len(absent)} not at the source, 0 failed" in out
    assert f"not at the source ({len(absent)}): " + ", ".join(absent) in out
    copied = existing_paths(tmp_path)
    assert copied == {e.path for e in wanted if store_exists(demo, e.path)}
    assert sum(p not in surface_paths for p in copied) == 24  # every fwRF FFA-1 store
    report = nest_data.mirror(tmp_path, location="demo", roi="FFA-1", show_progress=False)
    assert report.absent == absent and not report.copied and len(report.skipped) == len(copied)
    index = read_index(tmp_path)
    assert index is not None and _as_dicts(index) == _expected(tmp_path)
    assert nest_data.verify(tmp_path).ok
    with pytest.raises(nest_data.StoreNotFoundError, match="none of the 8 entries matching"):
        nest_data.mirror(tmp_path / "none", location="demo", imageset="nsd", roi="FFA-1",
                         model="vit_b_32")


# ------------------------------------------------------------------ verify and rebuild


def test_verify_names_each_index_problem_and_the_fix(collection: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    root = _copy(collection, tmp_path / "root")
    fix = f"run `nest-data index {root}`"
    assert nest_data.verify(root).ok
    doc = json.loads((root / INDEX_FILE).read_bytes())
    eeg = next(p for p in doc["stores"] if p.startswith("modality-eeg"))
    nsd = V1.replace("imageset-things", "imageset-nsd")
    doc["stores"][V1]["metadata_sha256"] = "sha256:" + "0" * 64
    doc["stores"][nsd]["format_version"] = 1
    doc["stores"][nsd]["nbytes"] += 1  # sizes are informative: damage is the checksums' job
    del doc["stores"][eeg]
    doc["stores"]["gone/sub-01.zarr"] = doc["stores"][nsd]
    (root / INDEX_FILE).write_text(json.dumps(doc))
    digest = bytes_digest((root / V1 / "zarr.json").read_bytes())
    report = nest_data.verify(root)
    assert _problems(report) == sorted([
        f"{V1}: index: its metadata (zarr.json) has checksum {digest}, the index records "
        f"sha256:{'0' * 64}; {fix}",
        f"{nsd}: index: its format version is {FORMAT_VERSION}, the index records 1; {fix}",
        f"{eeg}: index: is missing from {INDEX_FILE}; {fix}",
        f"gone/sub-01.zarr: index: is recorded in {INDEX_FILE} but no store is there; {fix}",
    ])
    assert main(["index", str(root)]) == 0
    assert f"{root}: indexed 21 store(s)" in capsys.readouterr().out
    assert nest_data.verify(root).ok
    shutil.rmtree(root / V1)  # a store deleted by hand
    assert _problems(nest_data.verify(root)) == [
        f"{V1}: index: is recorded in {INDEX_FILE} but no store is there; {fix}"]


def test_damaged_or_newer_index_is_an_error_not_ignored(collection: Path, ned_src: Path,
                                                        tmp_path: Path) -> None:
    root = _copy(collection, tmp_path / "root")
    (root / INDEX_FILE).write_bytes(b'{"format": "nest-data index", "stores": {')
    message = (f"{root}/{INDEX_FILE} is damaged: not JSON .*; rebuild it with "
               f"`nest-data index {root}`")
    with pytest.raises(IndexFormatError, match=message):
        existing_paths(root)
    with pytest.raises(IndexFormatError, match=message):
        nest_data.catalog().search(roi="V1", location=str(root))
    report = nest_data.verify(root)
    assert [p.store for p in report.problems] == [INDEX_FILE]
    # opening one entry never depends on the index
    assert nest_data.open(location=str(root), imageset="things", subject=1, roi="V1").shape[0] == 30
    # a writer rebuilds a damaged index from the files (and says so in the log)
    convert_ned(ned_src, root, imageset="things", subject=1, roi="V1", workers=1,
                overwrite=True)
    index = read_index(root)
    assert index is not None and _as_dicts(index) == _expected(root)
    # a newer major version is refused by readers and never overwritten by writers
    newer = b'{"format": "nest-data index", "version": "2.0", "stores": {}}'
    (root / INDEX_FILE).write_bytes(newer)
    with pytest.raises(IndexVersionError, match=r"is a version 2\.0 index, newer than this "
                       r"nest-data reads \(version 1\.0 and older\); upgrade nest-data"):
        read_index(root)
    with pytest.raises(IndexVersionError):
        _index.record_store(root, V1, _index.record_of(root / V1))
    with pytest.raises(IndexVersionError):
        nest_data.build_index(root)
    assert (root / INDEX_FILE).read_bytes() == newer
    (root / INDEX_FILE).write_text('{"format": "zarr"}')
    with pytest.raises(IndexFormatError, match="is not a nest-data index \\(format 'zarr'"):
        read_index(root)


# ------------------------------------------------------------------ concurrent writers

_WRITER = """
import shutil, sys, tempfile, time
from pathlib import Path
from nest_data._staging import commit
template, root, prefix, n, go = sys.argv[1:]
while not Path(go).exists():
    time.sleep(0.005)
for i in range(int(n)):
    stage = Path(tempfile.mkdtemp()) / "s"
    shutil.copytree(template, stage)
    commit(stage, root, f"{prefix}/store-{i:03d}.zarr")
"""


def test_two_processes_committing_at_once_lose_no_record(collection: Path, tmp_path: Path
                                                         ) -> None:
    root, go, n = tmp_path / "root", tmp_path / "go", 40
    root.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(collection / V1), str(root),
                               prefix, str(n), str(go)]) for prefix in ("a", "b")]
    time.sleep(0.5)
    go.touch()
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    index = read_index(root)
    expected = {f"{prefix}/store-{i:03d}.zarr" for prefix in "ab" for i in range(n)}
    assert index is not None and set(index.stores) == expected
    assert _as_dicts(index) == _expected(root)
    report = nest_data.verify(root)
    assert report.ok and report.stores == 2 * n


# ------------------------------------------------------------------ remote roots


def _stage_of(store: Path, tmp: Path) -> Path:
    return Path(shutil.copytree(store, tmp / f"stage-{uuid.uuid4().hex}"))


def test_s3_index_concurrent_writers_stale_lock_and_no_credentials(
        chunked: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = chunked / V1
    with S3Server() as server:
        url, options = server.url, dict(server.storage_options)
        fs, base = fsspec.core.url_to_fs(url, **options)
        commit(_stage_of(store, tmp_path), url, "first/sub.zarr", options)  # no index yet
        index = read_index(url, options)
        assert index is not None and list(index.stores) == ["first/sub.zarr"]
        assert index.stores["first/sub.zarr"] == _index.record_of(store)
        raw = fs.cat_file(f"{base}/{INDEX_FILE}")
        assert b"testing" not in raw and b"127.0.0.1" not in raw  # no credentials, endpoint
        # writers in threads at once (each its own lock object attempts)
        errors: list[BaseException] = []

        def writer(prefix: str) -> None:
            try:
                for i in range(4):
                    commit(_stage_of(store, tmp_path), url, f"{prefix}/s{i}.zarr", options)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(p,)) for p in ("a", "b", "c")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert not errors
        expected = {"first/sub.zarr"} | {f"{p}/s{i}.zarr" for p in "abc" for i in range(4)}
        assert existing_paths(url, options) == expected
        assert set(list_stores(url, options) or {}) == expected
        assert not fs.exists(f"{base}/{LOCK_FILE}")  # every writer removed its lock
        assert nest_data.verify(url, storage_options=options).ok
        # a lock left by a dead writer is taken over once stale; a live one makes writers wait
        fs.pipe_file(f"{base}/{LOCK_FILE}", json.dumps(
            {"owner": "dead", "created": time.time() - 10 * _locks.STALE_LOCK_S}).encode())
        commit(_stage_of(store, tmp_path), url, "late/sub.zarr", options)
        assert "late/sub.zarr" in existing_paths(url, options)
        fs.pipe_file(f"{base}/{LOCK_FILE}", json.dumps(
            {"owner": "alive", "created": time.time()}).encode())
        monkeypatch.setattr(_locks, "LOCK_WAIT_S", 0.4)
        with pytest.raises(IndexLockError, match="waited 0 s for the index lock .* another "
                           "writer holds it"):
            _index.record_store(url, "x.zarr", _index.record_of(store), options)
        fs.rm_file(f"{base}/{LOCK_FILE}")
        # rebuilt from one listing: the same records
        before = read_index(url, options)
        assert before is not None
        assert _as_dicts(nest_data.build_index(url, storage_options=options,
                                               show_progress=False)) == _as_dicts(before)


def test_http_listing_is_one_request(chunked: Path) -> None:
    with HTTPServer() as server:
        server.upload(chunked)
        server.reset()
        assert existing_paths(server.url) == {V1}
        assert [(r.method, r.path, r.status) for r in server.requests] == [
            ("GET", f"/root/{INDEX_FILE}", 200)]
        assert [e.label for e in nest_data.catalog().search(
            location=server.url, imageset="things", subject=1)] == [
            "fmri/nsd/fwrf things sub-01 V1"]
        with pytest.raises(LocationError, match="HTTP locations are read only"):
            write_index(server.url)
        # without an index: one probe per candidate path, the index's 404 first
        server.remove(INDEX_FILE)
        server.reset()
        other = V1.replace("V1", "FFA-1")
        assert existing_paths(server.url, candidates=[V1, other, V1]) == {V1}
        paths = sorted(r.path for r in server.requests)
        assert paths == sorted([f"/root/{INDEX_FILE}", f"/root/{V1}/zarr.json",
                                f"/root/{other}/zarr.json"])
        with pytest.raises(LocationError, match="cannot be listed \\(HTTP\\) and has no "
                           f"{INDEX_FILE}"):
            existing_paths(server.url)
        assert nest_data.verify(server.url).ok  # probes the catalog's paths, as before
