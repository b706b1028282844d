"""Running independent jobs inline or in a process pool, with one progress bar."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from typing import Any, TypeVar

from tqdm.auto import tqdm

from nest_data import _config

T = TypeVar("T")
_WATCH_S = 0.2  # how often a worker checks that its parent is alive

__all__ = ["run_jobs"]


def run_jobs(
    fn: Callable[[T], Any],
    jobs: Sequence[T],
    *,
    workers: int,
    desc: str,
    unit: str,
    chunksize: int = 1,
) -> Iterator[tuple[T, Any]]:
    """Yield ``(job, fn(job))`` as jobs finish; exceptions are yielded, not raised.

    ``workers <= 1`` runs inline.  Pools use the ``spawn`` start method: forking a process
    that already runs zarr's event-loop thread can deadlock.  ``chunksize`` consecutive jobs
    go to the same worker, so per-process caches are reused.  Workers exit as soon as this
    process dies (even by ``kill -9``), so none is left converting or idling as an orphan;
    what they had not committed stays in staging, invisible.
    """
    bar = tqdm(total=len(jobs), desc=desc, unit=unit,
               disable=not _config.show_progress())
    with bar:
        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                yield job, _call(fn, [job])[0]
                bar.update()
            return
        batches = [list(jobs[i:i + chunksize]) for i in range(0, len(jobs), chunksize)]
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context,
                                 initializer=_exit_with_parent,
                                 initargs=(os.getpid(),)) as pool:
            futures: dict[Future[list[Any]], list[T]] = {
                pool.submit(_call, fn, batch): batch for batch in batches}
            for future in as_completed(futures):
                batch = futures[future]
                try:
                    results = future.result()
                except BaseException as exc:  # the worker died: every job of it failed
                    results = [exc] * len(batch)
                for job, result in zip(batch, results, strict=True):
                    yield job, result
                bar.update(len(batch))


def _exit_with_parent(parent: int) -> None:
    """Start a watcher that ends this worker when ``parent`` is gone (it was re-parented)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_WATCH_S)
        os._exit(1)  # no clean-up: nothing unfinished is committed, staging stays hidden

    threading.Thread(target=watch, name="nest-data-parent-watch", daemon=True).start()


def _call(fn: Callable[[T], Any], batch: list[T]) -> list[Any]:
    out: list[Any] = []
    for job in batch:
        try:
            out.append(fn(job))
        except Exception as exc:
            out.append(exc)
    return out
