"""Locks for the writers of a root: a local ``flock``, or a lock object in a bucket.

A local lock is an exclusive ``flock`` on the root folder itself, released by the kernel
when its holder dies.  A remote lock is an object created only when absent (fsspec
``mode="create"``: S3 ``If-None-Match: *``, GCS ``ifGenerationMatch=0``), holding its
owner and creation time; one older than :data:`STALE_LOCK_S` is taken as left by a dead
writer and taken over.  Taking over is not atomic: two writers that find the same stale lock
at once may both proceed, which is why :mod:`nest_data._index` reads its writes back.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nest_data.errors import IndexLockError

logger = logging.getLogger("nest_data")

STALE_LOCK_S = 120.0  # a remote lock older than this was left by a dead writer
LOCK_WAIT_S = 600.0  # give up waiting for a remote lock after this long

__all__ = ["LOCK_WAIT_S", "STALE_LOCK_S", "local_lock", "remote_lock"]


@contextlib.contextmanager
def local_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on a local folder itself (no lock file is left behind;
    the kernel releases the lock when its holder dies).  POSIX only: ``fcntl`` is imported
    here, so that reading a collection works everywhere."""
    import fcntl

    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def remote_lock(fs: Any, lock: str) -> Iterator[None]:
    """Hold a lock object created only when absent; take over one older than STALE_LOCK_S.

    A file system without exclusive creation gets no lock (the caller's read-back covers it).
    """
    token = json.dumps({"owner": uuid.uuid4().hex, "created": time.time()}).encode()
    deadline = time.monotonic() + LOCK_WAIT_S
    delay = 0.05
    while True:
        try:
            fs.pipe_file(lock, token, mode="create")
            break
        except FileExistsError:
            pass
        except (TypeError, NotImplementedError):
            logger.info("%s cannot create objects exclusively: the index is written without "
                        "a lock and read back", type(fs).__name__)
            yield
            return
        held = lock_age(fs, lock)
        if held is not None and held > STALE_LOCK_S:
            logger.warning("taking over the index lock %s, held for %.0f s by a writer that "
                           "presumably died", lock, held)
            with contextlib.suppress(FileNotFoundError):
                fs.rm_file(lock)
            continue
        if time.monotonic() > deadline:
            raise IndexLockError(f"waited {LOCK_WAIT_S:.0f} s for the index lock {lock}; "
                                 "another writer holds it. Retry later, or delete the lock "
                                 "object if no writer runs")
        time.sleep(delay * (1 + random.random()))
        delay = min(2 * delay, 1.0)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            if fs.cat_file(lock) == token:
                fs.rm_file(lock)


def lock_age(fs: Any, lock: str) -> float | None:
    """Seconds since a lock object was created (per its writer's clock); None if gone."""
    try:
        return time.time() - float(json.loads(fs.cat_file(lock))["created"])
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        return STALE_LOCK_S + 1  # not a lock of ours: unreadable, so stale
