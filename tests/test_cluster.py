"""Faults at cluster scale, with real worker processes: a worker killed in the middle of a
whole-collection analysis, and ``generate`` surviving a killed worker and a killed client.

Every test runs a ``LocalCluster`` of 2 worker processes on loopback, waits (bounded) until
the run is under way, kills a process with SIGKILL, and checks values: the same result as
an uninterrupted run, bit for bit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")

from distributed import Client, LocalCluster, futures_of

import nest_data
from nest_data._verify import verify_store
from nest_data.synthetic import test_images, write_image_folder
from tests.servers import HTTPServer

SUBJECTS = [1, 2]
ROIS = ["V1", "FFA-1", "lateral"]
WAIT_S = 60  # longest wait for a run to reach the point where a process is killed
STORE = "modality-fmri/train_dataset-nsd/model-fwrf/imageset-mine/sub-01_roi-V1.zarr"


@pytest.fixture
def client() -> Iterator[Client]:
    """A fresh LocalCluster of 2 worker processes (its workers get killed)."""
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None) as cluster, \
            Client(cluster) as c:
        yield c


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` every 10 ms for at most :data:`WAIT_S` seconds."""
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {WAIT_S} s")
        time.sleep(0.01)


def _kill_a_busy_worker(client: Client) -> int:
    """SIGKILL a worker process that is running a task now; return its pid."""
    pids = client.run(os.getpid)
    busy: list[str] = []

    def running() -> bool:
        busy[:] = [w for w, tasks in client.processing().items() if tasks]
        return bool(busy)

    _wait_for(running, "a worker running a task")
    os.kill(pids[busy[0]], signal.SIGKILL)
    return int(pids[busy[0]])


# ------------------------------------------------------------------------- analyses


def test_killed_worker_mid_analysis_gives_the_identical_result(
        client: Client, collection: Path) -> None:
    """roi_means of remote entries (every read waits 0.3 s): a worker is killed after the
    first entries are done; the scheduler reruns its tasks on the other (readers travel in
    the graph), and the result is the uninterrupted one, bit for bit."""
    local = nest_data.open_many(imageset="nsd", subject=SUBJECTS, roi=ROIS,
                                location=str(collection))
    expected = nest_data.roi_means(local, min_ncsnr=0.5).compute(scheduler="synchronous")
    with HTTPServer() as server:
        server.upload(collection)
        tree = nest_data.open_many(imageset="nsd", subject=SUBJECTS, roi=ROIS,
                                   location=server.url)
        means = nest_data.roi_means(tree, min_ncsnr=0.5)
        uninterrupted = means.compute()
        server.latency = 0.3  # every request now waits: tasks take seconds, not ms
        persisted = client.persist(means)
        futures = futures_of(persisted)
        assert len(futures) == len(SUBJECTS) * len(ROIS)  # one output chunk per entry
        _wait_for(lambda: any(f.done() for f in futures), "the first entry's result")
        assert not all(f.done() for f in futures), "the run ended before a worker was killed"
        killed = _kill_a_busy_worker(client)
        got = persisted.compute()
        assert killed not in client.run(os.getpid).values()
    np.testing.assert_array_equal(got.values, uninterrupted.values)
    np.testing.assert_array_equal(got.values, expected.values)
    np.testing.assert_array_equal(got["n_voxels"].values, expected["n_voxels"].values)
    assert got.dims == ("subject", "roi", "image")


# ------------------------------------------------------------------------- generate


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("imgs")
    write_image_folder(folder, test_images(24, 64, seed=8))
    return folder


@pytest.fixture(scope="module")
def reference(fwrf_weights: Path, images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The store of an uninterrupted run, in this process, one chunk per image."""
    out = tmp_path_factory.mktemp("whole")
    nest_data.generate(images, out, imageset="mine", subject=1, roi="V1",
                       location=str(fwrf_weights), chunk_images=1)
    return out / STORE


def _files(store: Path) -> dict[str, bytes]:
    return {p.relative_to(store).as_posix(): p.read_bytes()
            for p in sorted(store.rglob("*")) if p.is_file()}


def _markers(dest: Path) -> list[Path]:
    staging = dest / ".nest-data-staging"
    return list(staging.glob("*.progress/*.json")) if staging.exists() else []


def _shard(store: Path, chunk: int) -> Path:
    """The shard object of stored chunk ``chunk`` (one image per chunk here)."""
    return store / "responses" / "c" / str(chunk) / "0"


def _assert_same_store(got: Path, reference: Path) -> None:
    """Every file's bytes equal (metadata, checksums, shards), and ``verify`` passes."""
    mine, theirs = _files(got), _files(reference)
    assert sorted(mine) == sorted(theirs) and len(mine) > 24
    assert [k for k in mine if mine[k] != theirs[k]] == []
    meta = json.loads((got / "zarr.json").read_bytes())
    assert meta["attributes"]["nest_data"]["complete"] is True
    assert verify_store(got) == []


def test_generate_survives_a_killed_worker(client: Client, fwrf_weights: Path,
                                           images: Path, reference: Path,
                                           tmp_path: Path) -> None:
    """A worker killed while it encodes: its chunks are encoded again elsewhere, chunks it
    had finished are not written twice, and the store is the uninterrupted one."""
    out = tmp_path / "out"
    with ThreadPoolExecutor(1) as pool:  # generate waits on the cluster in this thread
        done = pool.submit(nest_data.generate, images, out, imageset="mine", subject=1,
                           roi="V1", location=str(fwrf_weights), chunk_images=1, client=client)
        _wait_for(lambda: len(_markers(out)) >= 3 or done.done(), "3 finished chunks")
        assert not done.done(), "generate ended before a worker was killed"
        finished = {int(m.stem): _shard(m.parent.with_suffix(""), int(m.stem)).stat().st_mtime_ns
                    for m in _markers(out)}
        killed = _kill_a_busy_worker(client)
        url = done.result(timeout=WAIT_S)
    assert killed not in client.run(os.getpid).values()
    _assert_same_store(Path(url), reference)
    # a chunk finished before the kill is not encoded again (its result was lost with the
    # worker that held it, and the task found its marker)
    assert {i: _shard(Path(url), i).stat().st_mtime_ns for i in finished} == finished


def test_generate_resumes_after_its_client_is_killed(fwrf_weights: Path, images: Path,
                                                     reference: Path, tmp_path: Path) -> None:
    """SIGKILL the process that runs generate with its own LocalCluster (and its workers):
    the rerun encodes only what is left and ends byte-identical to an uninterrupted run."""
    out = tmp_path / "out"
    code = ("import sys, nest_data\n"
            "from distributed import Client, LocalCluster\n"
            "if __name__ == '__main__':\n"
            "    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,\n"
            "                      host='127.0.0.1', dashboard_address=None) as cluster, \\\n"
            "            Client(cluster) as client:\n"
            "        nest_data.generate(sys.argv[1], sys.argv[2], imageset='mine', subject=1,\n"
            "                           roi='V1', location=sys.argv[3], chunk_images=1,\n"
            "                           client=client)\n")
    script = tmp_path / "run.py"
    script.write_text(code)
    env = {**os.environ, "NEST_DATA_PROGRESS": "0"}
    # its own session: the client, the nannies and the workers are killed together
    child = subprocess.Popen([sys.executable, str(script), str(images), str(out),
                              str(fwrf_weights)], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, start_new_session=True)
    try:
        _wait_for(lambda: len(_markers(out)) >= 3 or child.poll() is not None,
                  "3 finished chunks")
        assert child.poll() is None, (f"the run ended before it could be killed: "
                                      f"{child.communicate()[1].decode()[-2000:]}")
        os.killpg(child.pid, signal.SIGKILL)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    done_before = len(_markers(out))
    assert 3 <= done_before < 24
    assert not (out / STORE).exists()  # nothing half-visible
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None) as cluster, \
            Client(cluster) as client:
        url = nest_data.generate(images, out, imageset="mine", subject=1, roi="V1",
                                 location=str(fwrf_weights), chunk_images=1, client=client)
    _assert_same_store(Path(url), reference)
    assert not any((out / ".nest-data-staging").iterdir())
