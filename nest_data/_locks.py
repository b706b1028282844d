"""Locks for the writers of a root: one writer per destination, and the index lock.

:func:`writer_lock` lets one process at a time write stores into a local destination
(``convert``, ``generate``, ``mirror``, the demo build): a non-blocking ``flock`` on the file
``DEST/.nest-data.lock``, which records who holds it, so a second writer is refused with a
message naming the first.  Remote destinations are not locked (see :func:`writer_lock`).

The index lock (:func:`local_lock`, :func:`remote_lock`) guards each read-modify-write of a
root's index, a few milliseconds; it is a different lock.  A local index lock is an
exclusive ``flock`` on the root folder itself, released by the kernel when its holder dies.
A remote one is an object created only when absent (fsspec ``mode="create"``: S3
``If-None-Match: *``, GCS ``ifGenerationMatch=0``), holding its owner and creation time;
one older than :data:`STALE_LOCK_S` is taken as left by a dead writer and taken over.
Taking over is not atomic: two writers that find the same stale lock at once may both
proceed, which is why :mod:`nest_data._index` reads its writes back.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import random
import shlex
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nest_data._urls import is_local, local_path
from nest_data.errors import IndexLockError, WriterLockError

logger = logging.getLogger("nest_data")

STALE_LOCK_S = 120.0  # a remote lock older than this was left by a dead writer
LOCK_WAIT_S = 600.0  # give up waiting for a remote lock after this long

WRITER_LOCK_FILE = ".nest-data.lock"  # at the root of a local destination

__all__ = ["LOCK_WAIT_S", "STALE_LOCK_S", "WRITER_LOCK_FILE", "local_lock", "remote_lock",
           "writer_lock"]

# Writer locks this process holds: lock file -> (thread holding it, nesting depth).  A writer
# that calls another (the demo build runs convert and generate) takes the lock once.
_held: dict[str, tuple[int, int]] = {}
_held_guard = threading.Lock()


@contextlib.contextmanager
def writer_lock(dest: str | os.PathLike[str], what: str, *, wait: float = 0.0
                ) -> Iterator[None]:
    """Be the only writer of a local destination while the block runs.

    Holds an exclusive ``flock`` on ``DEST/.nest-data.lock`` and writes into that file who
    holds it (pid, host, command, start time), which a refused writer quotes.  The kernel
    releases the lock when its holder ends, even by ``kill -9``, so a lock is never stale.
    The same thread may nest writers (the demo build converts, then generates): the inner
    ones pass through.  Other threads of the process are refused like other processes.

    Remote destinations (``s3://``, ``gs://``) are not locked: two writers into one bucket
    prefix at once each place complete stores (a store's root ``zarr.json`` goes last), and
    the one that finishes last wins; run one writer per prefix.

    Parameters
    ----------
    dest : path or URL
        The destination root (a local one is created if missing).
    what : str
        What writes (``"generate"``, ``"convert ned"``...), recorded for a refused writer.
    wait : float
        Seconds to wait for another writer to finish before refusing (default: refuse now).

    Raises
    ------
    WriterLockError
        Another writer holds the lock; the message names it and says what to do.

    Examples
    --------
    >>> import tempfile
    >>> dest = tempfile.mkdtemp()
    >>> with writer_lock(dest, "generate"):
    ...     with writer_lock(dest, "convert ned"):  # the same thread: nested, passes
    ...         pass
    """
    text = os.fspath(dest)
    if not is_local(text):
        logger.debug("%s: remote destinations are not locked against other writers", text)
        yield
        return
    folder = Path(local_path(text))
    folder.mkdir(parents=True, exist_ok=True)
    path = os.path.realpath(folder / WRITER_LOCK_FILE)
    me = threading.get_ident()
    with _held_guard:
        owner, depth = _held.get(path, (None, 0))
        if owner == me:
            _held[path] = (me, depth + 1)
    if owner == me:
        try:
            yield
        finally:
            with _held_guard:
                _held[path] = (me, _held[path][1] - 1)
        return
    fd = _acquire(path, text, what, wait)
    with _held_guard:
        _held[path] = (me, 1)
    try:
        yield
    finally:
        with _held_guard:
            del _held[path]
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # still held: nobody reads a former holder as the current
        os.close(fd)  # releases the lock


def _acquire(path: str, dest: str, what: str, wait: float) -> int:
    """Open and ``flock`` the lock file, write the holder into it; return its descriptor."""
    import fcntl  # POSIX only: reading a collection works everywhere

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # never truncated before it is held
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                holder = _holder(fd)
                os.close(fd)
                raise WriterLockError(
                    f"another nest-data writer is writing to {dest}: {holder}. One writer at "
                    f"a time per destination: wait for it to finish, or stop it, then run "
                    f"this {what} again (finished work is kept); or write to another "
                    "destination.") from None
            time.sleep(0.1)
        except BaseException:
            os.close(fd)
            raise
    try:
        record = {"pid": os.getpid(), "host": socket.gethostname(), "command": what,
                  "argv": shlex.join(sys.argv)[:500],
                  "started": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _holder(fd: int) -> str:
    """The holder recorded in a lock file, in words."""
    try:
        doc = json.loads(os.pread(fd, 65536, 0))
        return (f"{doc['command']} (pid {doc['pid']} on {doc['host']}, started "
                f"{doc['started']}: {doc['argv']})")
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not recorded itself yet"


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
