"""Exception classes of nest-data.

Every class derives from :class:`NestDataError` and from the built-in exception it
specialises, so ``except KeyError`` or ``except FileNotFoundError`` keep working for
callers that do not know nest-data.  Every message says what was wrong, what is valid
and how to fix it.
"""

from __future__ import annotations

from nest_data._redact import redact_text

__all__ = [
    "AmbiguousKeyError",
    "CatalogError",
    "ChecksumError",
    "ConversionError",
    "EncoderFreedError",
    "IndexFormatError",
    "IndexLockError",
    "IndexVersionError",
    "InputError",
    "LocationError",
    "MissingObjectError",
    "NestDataError",
    "NoSpaceError",
    "NonFiniteError",
    "RemoteReadError",
    "SourceFormatError",
    "StoreFormatError",
    "StoreNotFoundError",
    "StoreVersionError",
    "TargetExistsError",
    "UnknownKeyError",
    "WriterLockError",
]


class NestDataError(Exception):
    """Base class of every error raised by nest-data.

    A message never shows a credential: the passwords, signatures and tokens of the URLs in
    it are masked (:func:`nest_data._redact.redact_text`).

    Examples
    --------
    >>> str(NestDataError("cannot reach https://alice:wonderland@data.lab/nest"))
    'cannot reach https://alice:***@data.lab/nest'
    """

    def __init__(self, *args: object) -> None:
        super().__init__(*(redact_text(a) if isinstance(a, str) else a for a in args))


class UnknownKeyError(NestDataError, KeyError):
    """A catalog key (subject, ROI, image set, model, ...) has a value that does not exist."""

    def __str__(self) -> str:  # KeyError would show the message quoted
        return str(self.args[0]) if self.args else ""


class AmbiguousKeyError(NestDataError, ValueError):
    """The keys given match more than one kind of entry; one more key is needed."""


class CatalogError(NestDataError, ValueError):
    """A catalog file is malformed."""


class LocationError(NestDataError, ValueError):
    """A location (a root that holds stores) is unknown or not configured."""


class StoreFormatError(NestDataError, ValueError):
    """A store's metadata is inconsistent, or in a format this version of nest-data cannot read."""


class StoreVersionError(StoreFormatError):
    """A store was written in a newer format than this version of nest-data reads."""


class StoreNotFoundError(NestDataError, FileNotFoundError):
    """No store exists where an entry should be."""


class SourceFormatError(NestDataError, ValueError):
    """An original NED/NEST/BERG file is missing, truncated, or not in the expected format."""


class ConversionError(NestDataError, RuntimeError):
    """Converting one or more entries failed."""


class EncoderFreedError(NestDataError, RuntimeError):
    """An :class:`~nest_data.Encoder` used after :meth:`~nest_data.Encoder.free`."""


class InputError(NestDataError, ValueError):
    """An argument or input that cannot be used: images, selections, analysis parameters."""


class NonFiniteError(NestDataError, FloatingPointError):
    """A computation (an optimised image, an attribution) came out NaN or infinite."""


class ChecksumError(NestDataError, ValueError):
    """Data read back does not match the checksum recorded when it was written."""


class TargetExistsError(NestDataError, FileExistsError):
    """A write would replace something at its destination that nest-data did not write."""


class MissingObjectError(NestDataError, FileNotFoundError):
    """An object that a store's manifest lists is missing from the storage: never a fill value."""


class NoSpaceError(NestDataError, OSError):
    """A write ran out of space (or quota) at its destination; nothing half-written is left."""


class WriterLockError(NestDataError, BlockingIOError):
    """Another process is writing to the same destination; one writer at a time per root."""


class RemoteReadError(NestDataError, OSError):
    """Reading from a remote store failed (after retries, where retrying makes sense)."""


class IndexFormatError(NestDataError, ValueError):
    """A location's index (``nest-data-index.json``) is damaged or not a nest-data index."""


class IndexVersionError(IndexFormatError):
    """A location's index was written by a newer nest-data than this one reads."""


class IndexLockError(NestDataError, TimeoutError):
    """A location's index could not be updated: its lock stayed held, or writers collided."""
