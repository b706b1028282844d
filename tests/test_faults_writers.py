"""Faults of writers: two writers into one destination, files nest-data did not write inside
its folders, a writer killed and resumed from a moved source, and a full disk.

Every writer (``convert``, ``generate``, ``mirror``, the demo build) holds the destination's
writer lock, replaces only what it wrote, cleans what killed writers left in its staging
folder (and only that), and turns a full disk into a ``NoSpaceError`` with nothing
half-visible.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import nest_data
from nest_data._cli import main as cli
from nest_data._index import read_index
from nest_data._locks import WRITER_LOCK_FILE, writer_lock
from nest_data._staging import STAGE_MARKER, STAGING_DIR, check_replaceable
from nest_data.converters import convert_ned
from nest_data.errors import NoSpaceError, TargetExistsError, WriterLockError

WAIT_S = 120  # longest wait for a child process to reach the point the test needs
V1 = {"imageset": "things", "subject": 1, "roi": "V1"}


def _store(root: Path, **keys: Any) -> Path:
    return root / nest_data.catalog().resolve(**keys).path


def _staged(root: Path) -> list[str]:
    folder = root / STAGING_DIR
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def _wait_for(path: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            _, err = proc.communicate(timeout=30)
            pytest.fail(f"the child never got there (rc {proc.returncode}): {err.decode()}")
        time.sleep(0.02)


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root with the converted fwRF weights of subject 1, V1 (12 voxels)."""
    pytest.importorskip("torch")
    from nest_data.converters.weights import convert_weights
    from nest_data.synthetic import write_fwrf_weights

    nest, root = tmp_path_factory.mktemp("nest"), tmp_path_factory.mktemp("weights")
    write_fwrf_weights(nest, 1, "V1", n_voxels=12)
    convert_weights(nest, root, trust_pickles=True)
    return root


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from nest_data.synthetic import test_images, write_image_folder

    folder = tmp_path_factory.mktemp("images")
    write_image_folder(folder, test_images(6, 48, seed=3))
    return folder


class _Disk:
    """Bytes that still fit on a simulated disk; writing more raises ENOSPC."""

    def __init__(self, folder: Path, free: int, where: str) -> None:
        self.folder, self.free, self.where = str(folder), free, where
        self._lock = threading.Lock()

    def counts(self, file: Any, mode: str) -> bool:
        if isinstance(file, int) or not any(c in mode for c in "wax+"):
            return False
        path = str(Path(file).absolute())
        return path.startswith(self.folder) and self.where in path

    def take(self, n: int) -> None:
        with self._lock:
            if n > self.free:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.free -= n


class _Filling:
    """A file on the simulated disk: ``write`` takes its bytes from the free space first."""

    def __init__(self, file: Any, disk: _Disk) -> None:
        self._file, self._disk = file, disk

    def write(self, data: Any) -> int:
        self._disk.take(len(data.encode()) if isinstance(data, str) else memoryview(data).nbytes)
        return int(self._file.write(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)

    def __enter__(self) -> _Filling:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """``full_disk(folder, free=0, where="")``: writes of more than ``free`` bytes in all to
    files under ``folder`` (whose path contains ``where``) fail with ENOSPC, as on a full
    disk; ``monkeypatch.undo()`` frees the space.  Patches ``open`` (pathlib, zarr's local
    store and nest-data's writers all open files through it)."""

    def fill(folder: Path, free: int = 0, where: str = "") -> None:
        disk = _Disk(folder, free, where)
        real = io.open

        def opened(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            handle = real(file, mode, *args, **kwargs)
            return _Filling(handle, disk) if disk.counts(file, mode) else handle

        monkeypatch.setattr(io, "open", opened)
        monkeypatch.setattr("builtins.open", opened)

    return fill


# ------------------------------------------------------------------------------ one writer


def test_writer_lock_names_its_holder_nests_and_refuses_other_threads(tmp_path: Path) -> None:
    refused: list[BaseException] = []

    def other_writer() -> None:
        try:
            with writer_lock(tmp_path, "mirror"):
                pass
        except BaseException as exc:
            refused.append(exc)

    with writer_lock(tmp_path, "generate"):
        with writer_lock(tmp_path, "convert ned"):  # the same thread: passes
            pass
        thread = threading.Thread(target=other_writer)
        thread.start()
        thread.join(timeout=30)
        holder = (tmp_path / WRITER_LOCK_FILE).read_text()
    assert len(refused) == 1 and isinstance(refused[0], WriterLockError)
    assert isinstance(refused[0], BlockingIOError) and isinstance(refused[0],
                                                                  nest_data.NestDataError)
    message = str(refused[0])
    assert message.startswith(f"another nest-data writer is writing to {tmp_path}: generate "
                              f"(pid {os.getpid()} on {socket.gethostname()}, "
                              "started ")
    assert "wait for it to finish, or stop it, then run this mirror again" in message
    assert '"command": "generate"' in holder
    assert (tmp_path / WRITER_LOCK_FILE).read_text() == ""  # released: no holder recorded
    with writer_lock(tmp_path, "mirror"):  # free again
        pass


def test_second_writer_process_is_refused_and_the_first_store_verifies(
        weights: Path, images: Path, ned_src: Path, collection: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Two real processes into one DEST: a generate run holds the lock (held inside, at
    its tasks); a second generate (the CLI), a convert, a mirror and a demo build into the
    same DEST are refused with its name; the first then finishes, and its store verifies."""
    dest, ready, go = tmp_path / "dest", tmp_path / "ready", tmp_path / "go"
    code = ("import sys, time, pathlib\n"
            "import nest_data, nest_data._generate as g\n"
            "ready, go = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])\n"
            "run = g._run\n"
            "def held(*args, **kwargs):\n"
            "    ready.touch()\n"
            "    deadline = time.monotonic() + 120\n"
            "    while not go.exists() and time.monotonic() < deadline:\n"
            "        time.sleep(0.02)\n"
            "    return run(*args, **kwargs)\n"
            "g._run = held\n"
            "nest_data.generate(sys.argv[3], sys.argv[4], imageset='mine', subject=1, "
            "roi='V1', location=sys.argv[5], chunk_images=2, show_progress=False)\n")
    first = subprocess.Popen([sys.executable, "-c", code, str(ready), str(go), str(images),
                              str(dest), str(weights)], stderr=subprocess.PIPE)
    try:
        _wait_for(ready, first)
        named = f"generate (pid {first.pid} on {socket.gethostname()}, started "
        second = subprocess.run(
            [sys.executable, "-m", "nest_data._cli", "--no-progress", "generate", str(images),
             str(dest), "--imageset", "mine", "--subject", "1", "--roi", "V1", "--location",
             str(weights), "--chunk-images", "2"], capture_output=True, text=True, timeout=WAIT_S)
        assert second.returncode == 2
        assert second.stderr.startswith(f"nest-data: error: another nest-data writer is "
                                        f"writing to {dest}: {named}")
        assert "Traceback" not in second.stderr
        for write in (lambda: convert_ned(ned_src, dest, workers=1, **V1),
                      lambda: nest_data.mirror(dest, location=str(collection), workers=1, **V1),
                      lambda: nest_data.build_demo(dest=str(dest))):
            with pytest.raises(WriterLockError) as refused:
                write()
            assert f"writing to {dest}: {named}" in str(refused.value)
        assert not _store(dest, **V1).exists()  # none of them wrote anything
        go.touch()
        _, err = first.communicate(timeout=WAIT_S)
    finally:
        first.kill()
    assert first.returncode == 0, err.decode()
    store = dest / "modality-fmri/train_dataset-nsd/model-fwrf/imageset-mine/sub-01_roi-V1.zarr"
    assert nest_data.open_store(store).sizes == {"image": 6, "voxel": 12}
    report = nest_data.verify(dest)
    assert report.ok and report.stores == 1
    assert cli(["verify", str(dest)]) == 0
    assert "1 store(s) checked" in capsys.readouterr().out


def test_a_built_demo_is_found_without_the_lock_and_a_build_waits(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding the built demo needs no lock (it is found while another thread holds it); a
    build that must write waits for the holder, then refuses with its name."""
    from nest_data import _demo
    from nest_data._index import INDEX_FILE

    root = _demo.demo_root(tmp_path)
    root.mkdir(parents=True)
    (root / _demo._MARKER).write_text(json.dumps(_demo._stamp(_demo.DEMO_IMAGES)))
    (root / INDEX_FILE).write_text('{"format": "nest-data index", "version": "1.0", '
                                   '"stores": {}}')
    monkeypatch.setattr(_demo, "DEMO_BUILD_WAIT_S", 0.3)
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with writer_lock(root, "demo build"):
            held.set()
            release.wait(30)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        held.wait(30)
        assert nest_data.build_demo(cache_dir=tmp_path, show_progress=False) == root
        with pytest.raises(WriterLockError) as refused:
            nest_data.build_demo(cache_dir=tmp_path, rebuild=True, show_progress=False)
        assert f"writing to {root}: demo build (pid {os.getpid()}" in str(refused.value)
    finally:
        release.set()
        thread.join(timeout=30)


# ------------------------------------------------------------------------------ foreign files


def test_overwrite_refuses_a_store_holding_user_files_and_keeps_them(
        ned_src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    convert_ned(ned_src, tmp_path, workers=1, **V1)
    store = _store(tmp_path, **V1)
    (store / "NOTES.txt").write_text("my notes")
    (store / "analysis").mkdir()
    (store / "analysis" / "fit.csv").write_text("a,b\n")
    (store / "responses" / "c" / "mine.npy").write_bytes(b"x")  # among the chunks
    (store / "scratch").mkdir()
    before = sorted(p.relative_to(store).as_posix() for p in store.rglob("*"))
    args = ["--no-progress", "convert", "ned", str(ned_src), str(tmp_path), "--workers", "1",
            "--overwrite", "--imageset", "things", "--subject", "1", "--roi", "V1"]
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert (f"{store} is a folder nest-data wrote, but it also holds 4 file(s) or folder(s) "
            "nest-data did not write: NOTES.txt, analysis/fit.csv, responses/c/mine.npy, "
            "scratch/. nest-data replaces only what it wrote and never deletes anything else: "
            "move them out of that folder, then run this again.") in err
    assert "Traceback" not in err
    assert sorted(p.relative_to(store).as_posix() for p in store.rglob("*")) == before
    assert (store / "NOTES.txt").read_text() == "my notes"
    assert nest_data.verify(tmp_path).ok
    for name in ("NOTES.txt", "analysis", "responses/c/mine.npy", "scratch"):
        shutil.move(store / name, tmp_path / Path(name).name)
    assert cli(args) == 0  # only what nest-data wrote is left: replaced
    assert nest_data.verify(tmp_path).ok and _staged(tmp_path) == []


def test_weights_folder_with_a_user_file_is_not_replaced(tmp_path: Path) -> None:
    folder = tmp_path / "weights" / "sub-01"
    folder.mkdir(parents=True)
    (folder / "model.json").write_text('{"format": "nest-data fwrf weights 1"}')
    (folder / "weights.safetensors").write_bytes(b"...")
    check_replaceable(tmp_path, "weights/sub-01")  # only what nest-data writes there
    (folder / "README.md").write_text("where these came from")
    with pytest.raises(TargetExistsError, match=r"also holds 1 file\(s\) or folder\(s\) "
                                                "nest-data did not write: README.md"):
        check_replaceable(tmp_path, "weights/sub-01")


def test_remote_store_with_a_user_file_is_not_replaced() -> None:
    """The same check on a bucket (fsspec's memory file system stands for one)."""
    import uuid

    import fsspec

    root = f"memory://nest-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    base = root.removeprefix("memory://") + "/a.zarr"
    doc = {"zarr_format": 3, "node_type": "group", "consolidated_metadata": {
        "kind": "inline", "must_understand": False, "metadata": {"responses": {}}},
           "attributes": {"nest_data": {"objects": {"responses/c/0/0": "sha256:0"}}}}
    fs.pipe({f"{base}/zarr.json": json.dumps(doc).encode(),
             f"{base}/responses/zarr.json": b"{}", f"{base}/responses/c/0/0": b"x"})
    try:
        check_replaceable(root, "a.zarr")  # only what nest-data wrote
        fs.pipe_file(f"{base}/notes/today.md", b"mine")
        with pytest.raises(TargetExistsError, match=r"also holds 1 file\(s\) or folder\(s\) "
                                                    "nest-data did not write: notes/today.md"):
            check_replaceable(root, "a.zarr")
    finally:
        fs.rm(root.removeprefix("memory://"), recursive=True)


def test_convert_cleans_only_the_staging_nest_data_made(
        ned_src: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    staging = tmp_path / STAGING_DIR
    stale = staging / f"{'a' * 32}-sub-01_roi-V1.zarr"  # a stage of a killed conversion
    (stale / "responses").mkdir(parents=True)
    (stale / STAGE_MARKER).write_bytes(b"")
    moved = staging / f"{'b' * 32}-old-sub-01_roi-V1.zarr"  # a store commit moved aside
    moved.mkdir()
    (moved / "zarr.json").write_text("{}")
    job = staging / f"generate-{'c' * 16}-sub-01_roi-V1.zarr"  # resumable: kept
    job.mkdir()
    (staging / "NOTES.txt").write_text("mine")
    (staging / "analysis").mkdir()
    lookalike = staging / f"{'d' * 32}-thesis"  # named like a stage, but not one of ours
    lookalike.mkdir()
    (lookalike / "chapter1.tex").write_text("years of work")
    with caplog.at_level(logging.WARNING, logger="nest_data"):
        convert_ned(ned_src, tmp_path, workers=1, **V1)
    assert _staged(tmp_path) == sorted(["NOTES.txt", "analysis", lookalike.name, job.name])
    assert (staging / "NOTES.txt").read_text() == "mine"
    assert (lookalike / "chapter1.tex").read_text() == "years of work"
    warned = [r.getMessage() for r in caplog.records if "was not made by nest-data" in
              r.getMessage()]
    assert sorted(warned) == sorted(
        f"{staging / name} was not made by nest-data: it is left where it is; move it out "
        f"of {staging}, which holds the unfinished writes of nest-data"
        for name in ("NOTES.txt", "analysis", lookalike.name))
    assert nest_data.verify(tmp_path).ok


# ------------------------------------------------------------------------------ kill -9


def test_killed_mirror_resumed_from_a_moved_source_leaves_no_staging(
        collection: Path, tmp_path: Path) -> None:
    """kill -9 while two entries are fetched but not committed; the rerun copies from the
    same stores at another URL (the source moved), and no staging is left behind."""
    dest, ready = tmp_path / "dest", tmp_path / "ready"
    keys = {"subject": 1, "roi": "V1", "imageset": ["things", "nsd"]}
    code = ("import sys, time, pathlib\n"
            "import nest_data, nest_data._mirror as m\n"
            "calls = []\n"
            "def stop(*args, **kwargs):\n"  # the first entry is left uncommitted, then held
            "    calls.append(args)\n"
            "    if len(calls) == 2:\n"
            "        pathlib.Path(sys.argv[1]).touch()\n"
            "        time.sleep(120)\n"
            "m.commit = stop\n"
            "nest_data.mirror(sys.argv[2], location=sys.argv[3], workers=1, "
            f"show_progress=False, **{keys!r})\n")
    child = subprocess.Popen([sys.executable, "-c", code, str(ready), str(dest),
                              str(collection)], stderr=subprocess.PIPE)
    try:
        _wait_for(ready, child)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        child.kill()
    assert len(_staged(dest)) == 2 and all(n.startswith("mirror-") for n in _staged(dest))
    assert not (dest / "modality-fmri").exists()  # nothing visible
    moved = tmp_path / "moved"
    shutil.copytree(collection, moved)
    report = nest_data.mirror(dest, location=str(moved), workers=1, show_progress=False,
                              **keys)
    assert report.copied == ["fmri/nsd/fwrf nsd sub-01 V1", "fmri/nsd/fwrf things sub-01 V1"]
    assert _staged(dest) == []
    assert nest_data.verify(dest).ok


# ------------------------------------------------------------------------------ full disk


def _mb(nbytes: int) -> int:
    return max(1, round(nbytes / 2**20))


def test_convert_on_a_full_disk(ned_src: Path, tmp_path: Path, full_disk: Callable[..., None],
                                monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    keys = ["--imageset", "things", "--subject", "1", "--roi", "V1", "FFA-1"]
    args = ["--no-progress", "convert", "ned", str(ned_src), str(tmp_path), "--workers", "1",
            *keys]
    sources = nest_data.converters.discover_ned(ned_src, imageset="things", subject=1,
                                                roi=["V1", "FFA-1"])
    full_disk(tmp_path, free=50_000)  # part of the first entry fits
    assert cli(args) == 2
    err = capsys.readouterr().err
    needs = _mb(sum(s.h5.stat().st_size for s in sources))
    assert (f"nest-data: error: no space left on {tmp_path} (needs about {needs} MB; 0 of 2 "
            "entries converted, 0 already complete); nothing half-written is visible there. "
            "Free some space (or write to another destination) and run the same command "
            "again: finished work is kept.") in err
    assert "Traceback" not in err and "re-download" not in err
    assert not (tmp_path / "modality-fmri").exists() and _staged(tmp_path) == []
    monkeypatch.undo()
    assert cli(args) == 0
    assert nest_data.verify(tmp_path).ok


def test_destination_on_a_full_disk_is_named_as_full(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A root that cannot even take an empty file is full, not unwritable."""
    from nest_data._staging import make_root

    def full(self: Path, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(NoSpaceError, match=f"^no space left on {tmp_path / 'new'}; nothing "
                                           "half-written is visible there"):
        make_root(tmp_path / "new")


def test_generate_on_a_full_disk(weights: Path, images: Path, tmp_path: Path,
                                 full_disk: Callable[..., None],
                                 monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--no-progress", "generate", str(images), str(tmp_path), "--imageset", "mine",
            "--subject", "1", "--roi", "V1", "--location", str(weights), "--chunk-images", "2"]
    full_disk(tmp_path, where="/responses/c/")  # the disk fills when chunks are written
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"nest-data: error: no space left on {tmp_path} (needs about 1 MB); "
                          "nothing half-written is visible there.")
    assert "Traceback" not in err
    assert not (tmp_path / "modality-fmri").exists()
    with pytest.raises(NoSpaceError) as raised:  # the API raises the same, an OSError
        nest_data.generate(images, tmp_path, imageset="mine", subject=1, roi="V1",
                           location=str(weights), chunk_images=2)
    assert raised.value.errno == errno.ENOSPC and isinstance(raised.value, OSError)
    monkeypatch.undo()
    assert cli(args) == 0  # resumes
    assert nest_data.verify(tmp_path).ok and _staged(tmp_path) == []


def _fetches_running() -> list[asyncio.Task[Any]]:
    """The object fetches of ``mirror`` still running on zarr's event loop."""
    from zarr.core.sync import _get_loop

    return [t for t in asyncio.all_tasks(_get_loop())
            if "_fetch_all" in getattr(t.get_coro(), "__qualname__", "")]


def test_generate_drops_its_unfinished_job_made_with_other_arguments(
        weights: Path, images: Path, tmp_path: Path, full_disk: Callable[..., None],
        monkeypatch: pytest.MonkeyPatch) -> None:
    kwargs: dict[str, Any] = {"imageset": "mine", "subject": 1, "roi": "V1",
                              "location": str(weights), "show_progress": False}
    full_disk(tmp_path, where="/responses/c/")
    with pytest.raises(NoSpaceError):
        nest_data.generate(images, tmp_path, chunk_images=2, **kwargs)
    unfinished = _staged(tmp_path)
    assert len(unfinished) == 2 and all(n.startswith("generate-") for n in unfinished)
    monkeypatch.undo()
    nest_data.generate(images, tmp_path, chunk_images=3, **kwargs)  # another job, same store
    assert _staged(tmp_path) == []
    assert nest_data.verify(tmp_path).ok


def test_mirror_on_a_full_disk(collection: Path, tmp_path: Path,
                               full_disk: Callable[..., None], monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str],
                               caplog: pytest.LogCaptureFixture) -> None:
    """No traceback, no asyncio task left failing, no blame on the source."""
    args = ["--no-progress", "mirror", str(tmp_path), "--location", str(collection),
            "--subject", "1", "--roi", "V1", "--imageset", "things", "nsd", "--workers", "1"]
    index = read_index(collection)
    assert index is not None
    needs = _mb(sum(r.nbytes for p, r in index.stores.items()
                    if "sub-01_roi-V1" in p and ("imageset-things" in p or "imageset-nsd" in p)))
    full_disk(tmp_path, free=100_000)
    with caplog.at_level(logging.WARNING):
        assert cli(args) == 2
        assert not _fetches_running()  # no fetch left running, to fail unseen later
        gc.collect()  # a finished task whose error nobody retrieved would log now
    err = capsys.readouterr().err
    assert err.startswith(f"nest-data: error: no space left on {tmp_path} (needs about {needs} "
                          "MB; 0 of 2 entries copied, 0 already up to date); nothing "
                          "half-written is visible there.")
    assert "Traceback" not in err and "check the URL" not in err
    assert not [r for r in caplog.records if r.name == "asyncio"]
    assert not (tmp_path / "modality-fmri").exists()
    monkeypatch.undo()
    assert cli(args) == 0  # resumes
    assert nest_data.verify(tmp_path).ok and _staged(tmp_path) == []


@pytest.fixture(autouse=True)
def _no_lock_left(tmp_path: Path) -> Iterator[None]:
    """Every writer releases its lock: a test ends with none held."""
    yield
    lock = tmp_path / WRITER_LOCK_FILE
    if lock.exists():
        with writer_lock(tmp_path, "check"):
            pass
