"""Configuration resolved at call time: cache directory, data root, progress bars.

Lookup order, documented once (docs/guide/catalog.md, "Configuration"):

1. the function argument (``location=``, ``cache_dir=``, ``show_progress=``); a public
   function's ``show_progress=`` holds for everything it calls, and
   :func:`nest_data.set_options` sets it for a block or for the session;
2. the environment variable (``NEST_DATA_LOCATION``, ``NEST_DATA_ROOT``,
   ``NEST_DATA_CACHE_DIR``, ``NEST_DATA_PROGRESS``);
3. the default: ``platformdirs.user_cache_dir("nest-data")`` for the cache, progress bars on.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ParamSpec, TypeVar, cast

import platformdirs

from nest_data.errors import InputError

logger = logging.getLogger("nest_data")

ENV_ROOT = "NEST_DATA_ROOT"
ENV_LOCATION = "NEST_DATA_LOCATION"
ENV_CACHE_DIR = "NEST_DATA_CACHE_DIR"
ENV_PROGRESS = "NEST_DATA_PROGRESS"
ENV_CACHE = "NEST_DATA_CACHE"
ENV_VERIFY = "NEST_DATA_VERIFY"
ENV_CONNECT_TIMEOUT = "NEST_DATA_CONNECT_TIMEOUT"
ENV_READ_TIMEOUT = "NEST_DATA_READ_TIMEOUT"
#: Seconds to connect to a server, and to wait for its next bytes (an idle timeout).
DEFAULT_TIMEOUTS = {"connect_timeout": 10.0, "read_timeout": 30.0}

P = ParamSpec("P")
R = TypeVar("R")

# Progress bars on or off for the current context (None: not set here; see show_progress).
_PROGRESS: contextvars.ContextVar[bool | None] = contextvars.ContextVar(
    "nest_data_progress", default=None)
# Timeouts set with set_options (a name is absent: not set here; see timeouts).
_TIMEOUTS: contextvars.ContextVar[dict[str, float]] = contextvars.ContextVar(
    "nest_data_timeouts", default={})  # noqa: B039 - never mutated, replaced


def timeouts() -> dict[str, float]:
    """The connect and read (idle) timeouts of remote reads, in seconds.

    :func:`set_options`, then ``NEST_DATA_CONNECT_TIMEOUT`` / ``NEST_DATA_READ_TIMEOUT``,
    then :data:`DEFAULT_TIMEOUTS`.

    Examples
    --------
    >>> with set_options(read_timeout=5):
    ...     timeouts()["read_timeout"]
    5.0
    """
    out = {}
    envs = {"connect_timeout": ENV_CONNECT_TIMEOUT, "read_timeout": ENV_READ_TIMEOUT}
    for name, default in DEFAULT_TIMEOUTS.items():
        value = _TIMEOUTS.get().get(name)
        if value is None:
            text = os.environ.get(envs[name], "").strip()
            value = _seconds(text, envs[name]) if text else default
        out[name] = value
    return out


def _seconds(value: object, what: str) -> float:
    """A timeout in seconds: a finite number > 0."""
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        seconds = float("nan")
    if isinstance(value, bool) or not 0 < seconds < float("inf"):
        raise InputError(f"{what}={value!r} is not a timeout; give a number of seconds above "
                         f"0, e.g. {what}=30")
    return seconds


def cache_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """Return the nest-data cache directory (argument, then env var, then platform default)."""
    if path is not None:
        return Path(path)
    env = os.environ.get(ENV_CACHE_DIR)
    if env:
        return Path(env)
    return Path(platformdirs.user_cache_dir("nest-data"))


def flag(value: bool | None, env: str, default: bool = False) -> bool:
    """Resolve an on/off setting: the argument, then the environment variable, then default."""
    if value is not None:
        return value
    text = os.environ.get(env)
    if text is None or not text.strip():
        return default
    return text.strip().lower() not in {"0", "false", "no", "off"}


def show_progress(value: bool | None = None) -> bool:
    """Whether to show progress bars: the argument, then the setting of the current context
    (:func:`progress`, a public function's ``show_progress=``, :func:`nest_data.set_options`),
    then ``NEST_DATA_PROGRESS``, then on."""
    return flag(_PROGRESS.get() if value is None else value, ENV_PROGRESS, default=True)


@contextlib.contextmanager
def progress(value: bool | None) -> Iterator[None]:
    """Progress bars on or off (None: as they were) for everything inside the block."""
    if value is None:
        yield
        return
    token = _PROGRESS.set(value)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


def progress_option(func: Callable[P, R]) -> Callable[P, R]:
    """Make a public function's ``show_progress=`` hold for everything the call does.

    Lower layers never take the option: they ask :func:`show_progress`.
    """
    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with progress(cast("bool | None", kwargs.get("show_progress"))):
            return func(*args, **kwargs)

    return wrapper


def set_progress(value: bool | None) -> bool | None:
    """Set progress bars on or off (None: back to ``NEST_DATA_PROGRESS``) in the current
    context; return the previous setting."""
    previous = _PROGRESS.get()
    _PROGRESS.set(value)
    return previous


_UNCHANGED = object()  # set_options: an option not given keeps its setting


class set_options:  # a function-like name, as xarray.set_options
    """Set nest-data's options for the rest of the session, or for a ``with`` block.

    Parameters
    ----------
    progress : bool, optional
        Show progress bars (``True``/``False``), or follow ``NEST_DATA_PROGRESS`` again
        (``None``).  A function's own ``show_progress=`` still wins for its call.
    connect_timeout, read_timeout : float, optional
        Seconds a remote read may take to connect, and may wait for the server's next bytes
        (default 10 and 30, or ``NEST_DATA_CONNECT_TIMEOUT`` / ``NEST_DATA_READ_TIMEOUT``).
        A read that times out is retried like other transient failures, then raises
        :class:`~nest_data.errors.RemoteReadError`.  They apply to stores opened after they
        are set; a timeout in a location's ``storage_options`` wins (``client_kwargs=
        {"timeout": ...}`` over HTTP, ``config_kwargs`` for S3, ``session_kwargs`` for GCS).

    Examples
    --------
    >>> import nest_data
    >>> da = nest_data.open(imageset="things", subject=1, roi="V1", location="demo")
    >>> with nest_data.set_options(progress=False):
    ...     top = nest_data.top_images(da, k=3)  # no progress bar
    >>> top.sizes["image"]
    3
    """

    def __init__(self, *, progress: bool | object | None = _UNCHANGED,
                 connect_timeout: float | None = None, read_timeout: float | None = None
                 ) -> None:
        if progress is not _UNCHANGED and progress is not None and not isinstance(progress,
                                                                                   bool):
            raise InputError(f"progress={progress!r}: give True (bars on), False (off) or None "
                             "(follow NEST_DATA_PROGRESS)")
        given = {"connect_timeout": connect_timeout, "read_timeout": read_timeout}
        chosen = {name: _seconds(value, name) for name, value in given.items()
                  if value is not None}
        self._previous = _PROGRESS.get()
        if progress is not _UNCHANGED:
            set_progress(cast(bool | None, progress))
        self._previous_timeouts = _TIMEOUTS.get()
        _TIMEOUTS.set({**self._previous_timeouts, **chosen})

    def __enter__(self) -> set_options:
        return self

    def __exit__(self, *exc: object) -> None:
        set_progress(self._previous)
        _TIMEOUTS.set(self._previous_timeouts)
