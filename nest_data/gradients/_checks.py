"""Checks of the numbers :func:`nest_data.dream`, :func:`nest_data.saliency` and the
objectives take, and of the memory a call will need, before anything is allocated.

Every numeric argument is described once by a :class:`Range` (what it is, its bounds, integer
or real); :func:`refuse` turns the arguments outside their ranges into one
:class:`~nest_data.errors.InputError` that names each valid range.  NaN and infinity are
never in a range: torch does not refuse them everywhere (a NaN rotation crashed libtorch's
``grid_sample`` backward), so they are stopped here.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from nest_data.errors import InputError, NonFiniteError

__all__ = ["ENCODER_BYTES_PER_IMAGE", "MEMORY_LIMIT_ENV", "Range", "check_finite",
           "check_memory", "memory_limit", "refuse"]

#: Environment variable that caps the memory one call may plan to use, e.g. ``"8GB"``.
MEMORY_LIMIT_ENV = "NEST_DATA_MAX_MEMORY"
#: Memory one image takes through one encoder with gradients (activations kept for the
#: backward pass), rounded up from the peak of the demo's fwRF (about 20 MB) and BERG's
#: ViT-B/32 surface model (about 8 MB), measured with 8 images of 227 pixels.
ENCODER_BYTES_PER_IMAGE = 32 * 10**6
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclass(frozen=True)
class Range:
    """The valid values of one numeric argument.

    Parameters
    ----------
    what : str
        What the argument is, e.g. ``"pixels per side"``.
    low, high : int or float, optional
        Bounds (None: unbounded on that side); ``high`` is always included.
    integer : bool
        Only integers (Python's or NumPy's; never a bool).
    low_open : bool
        ``low`` itself is excluded (``0 < lr``).

    Examples
    --------
    >>> size = Range("pixels per side", 16, 4096, integer=True)
    >>> str(size)
    'pixels per side: an integer from 16 to 4096'
    >>> size.problem("size", 100000)
    'size=100000 (pixels per side: an integer from 16 to 4096)'
    >>> Range("a learning rate", 0, 10, low_open=True).problem("lr", float("inf"))
    'lr=inf (a learning rate: a finite number, 0 < lr <= 10)'
    >>> size.problem("size", 227) is None
    True
    """

    what: str
    low: float | None = None
    high: float | None = None
    integer: bool = False
    low_open: bool = False

    def describe(self, name: str = "x") -> str:
        """The range in words, with ``name`` where a comparison needs one."""
        kind = "an integer" if self.integer else "a finite number"
        low, high = (None if b is None else f"{b:d}" if self.integer else f"{b:g}"
                     for b in (self.low, self.high))
        if low is not None and high is not None and not self.low_open:
            return f"{kind} from {low} to {high}"
        if low is not None and high is not None:
            return f"{kind}, {low} < {name} <= {high}"
        if low is not None:
            return f"{kind} {'>' if self.low_open else '>='} {low}"
        if high is not None:
            return f"{kind} <= {high}"
        return kind

    def __str__(self) -> str:
        return f"{self.what}: {self.describe()}"

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is of the right type, finite, and within the bounds."""
        if not (_is_integer(value) if self.integer else _is_real(value)):
            return False
        if not self.integer and not math.isfinite(value):  # (an int is finite, however big)
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or value <= self.high

    def problem(self, name: str, value: Any) -> str | None:
        """``name=value (the range)`` when ``value`` is outside the range, else None."""
        if self.contains(value):
            return None
        return f"{name}={value!r} ({self.what}: {self.describe(name)})"


def refuse(function: str, problems: Iterable[str | None]) -> None:
    """Raise one :class:`InputError` listing the problems (None entries are fine values).

    Examples
    --------
    >>> refuse("dream()", [None, Range("degrees", 0, 180).problem("rotate", float("nan"))])
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    nest_data.errors.InputError: dream() cannot use rotate=nan (degrees: a finite number ...
    """
    found = [p for p in problems if p]
    if found:
        raise InputError(f"{function} cannot use " + "; ".join(found)
                         + "; give values in the ranges shown")


def check_finite(values: Any, what: str, fix: str) -> None:
    """Raise :class:`NonFiniteError` when a tensor or array holds NaN or infinity.

    Parameters
    ----------
    values : torch.Tensor or numpy.ndarray
    what : str
        What the values are and where they came from (the message's subject).
    fix : str
        What to change.
    """
    import numpy as np

    if hasattr(values, "detach"):  # a tensor: count on its device, move one number
        import torch

        bad = int((~torch.isfinite(values.detach())).sum())
    else:
        bad = int((~np.isfinite(np.asarray(values))).sum())
    if bad:
        raise NonFiniteError(f"{what} holds {bad} NaN or infinite value(s) of "
                             f"{int(np.prod(values.shape))}; nothing is returned. To fix: {fix}")


def _parse_bytes(text: str) -> int:
    """``"8GB"``, ``"512 MiB"`` or ``"2e9"`` as a number of bytes."""
    cleaned = text.strip().upper().replace(" ", "")
    number = cleaned.rstrip("KMGTIB")
    unit = cleaned[len(number):]
    try:
        value = float(number) * _UNITS[unit]
    except (KeyError, ValueError):
        value = float("nan")
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"{MEMORY_LIMIT_ENV}={text!r} is not a size; give a positive number "
                         "of bytes with a unit, e.g. 8GB or 512MiB, or unset it")
    return int(value)


def memory_limit(device: Any = None) -> tuple[int | None, str]:
    """The bytes a call may plan to use, and a phrase that says where the figure comes from.

    On a CUDA device, its free memory.  Else ``NEST_DATA_MAX_MEMORY`` when set (e.g.
    ``"8GB"``), then the machine's physical memory (``os.sysconf``); None where neither is
    known (then nothing is refused).
    """
    if device is not None and getattr(device, "type", "cpu") == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        return int(free), f"{device} has {_gigabytes(free)} free"
    text = os.environ.get(MEMORY_LIMIT_ENV)
    if text:
        limit = _parse_bytes(text)
        return limit, f"{MEMORY_LIMIT_ENV} allows at most {_gigabytes(limit)}"
    try:
        total = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):  # not POSIX
        return None, "unknown"
    return total, f"this machine has {_gigabytes(total)} of memory"


def check_memory(function: str, needed: int, fix: str, device: Any = None) -> None:
    """Refuse a call whose estimated memory ``needed`` (bytes) exceeds :func:`memory_limit`.

    Examples
    --------
    >>> import os
    >>> os.environ[MEMORY_LIMIT_ENV] = "1GB"
    >>> check_memory("dream()", 38 * 10**9, "lower n or size")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    nest_data.errors.InputError: dream() needs about 38 GB of memory; NEST_DATA_MAX_MEMORY ...
    >>> del os.environ[MEMORY_LIMIT_ENV]
    """
    limit, source = memory_limit(device)
    if limit is not None and needed > limit:
        raise InputError(f"{function} needs about {_gigabytes(needed)} of memory; {source}: "
                         f"{fix}")


def _gigabytes(n: int) -> str:
    """Bytes as GB, with two significant digits below 10 GB."""
    if n >= 10**21:  # beyond any machine (and beyond a float, for huge ints)
        return "10^12 GB or more"
    gb = n / 1e9
    return f"{gb:.2g} GB" if gb < 10 else f"{gb:,.0f} GB"
