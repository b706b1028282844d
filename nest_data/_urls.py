"""URLs of roots and stores: local or remote, joined, and their storage options checked
against what the URL's file system really uses."""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from typing import Any

from nest_data.errors import InputError, LocationError

__all__ = ["check_storage_options", "is_local", "join", "local_path", "validate_storage_options",
           "with_timeouts"]


def is_local(url: str | os.PathLike[str]) -> bool:
    """Whether ``url`` names a local folder (a plain path or ``file://``)."""
    text = os.fspath(url)
    return "://" not in text or text.startswith("file://")


def local_path(url: str | os.PathLike[str]) -> str:
    """The folder a local URL names (``file://`` stripped)."""
    return os.fspath(url).removeprefix("file://")


def join(root: str | os.PathLike[str], path: str) -> str:
    """Join a root URL or folder and a relative store path with ``/``."""
    return os.fspath(root).rstrip("/") + "/" + path.lstrip("/")


def check_storage_options(storage_options: Any) -> None:
    """``storage_options=`` must be a dict (or None)."""
    if storage_options is not None and not isinstance(storage_options, Mapping):
        # its value is not shown: it may be a credential given in the wrong place
        raise InputError(f"storage_options= (a {type(storage_options).__name__}) is not a "
                         "dict; give a dict of fsspec options, e.g. storage_options={'anon': "
                         "True}")


def validate_storage_options(url: str, storage_options: Mapping[str, Any]) -> None:
    """Refuse storage options that the URL's file system would not use.

    fsspec file systems accept ``**kwargs`` and silently drop what they do not know
    (``anon=True`` for a GCS URL, say); here every option must be a named parameter of the
    file system class.

    Raises
    ------
    LocationError
        Unknown protocol, missing optional dependency, or an unused option.
    """
    import fsspec

    protocol = url.split("://", 1)[0]
    try:
        cls = fsspec.get_filesystem_class(protocol)
    except ValueError as exc:
        raise LocationError(f"unknown protocol {protocol!r} in {url!r}; use a local folder or "
                            "an s3://, gs://, http(s)://, file:// or memory:// URL") from exc
    except ImportError as exc:
        extra = {"s3": "s3", "gs": "gcs", "gcs": "gcs"}.get(protocol)
        hint = (f"pip install 'nest-data[{extra}]'" if extra
                else f"install fsspec's {protocol} support")
        raise LocationError(f"reading {url!r} needs an optional dependency ({exc}); {hint}"
                            ) from exc
    accepted = _named_parameters(cls) | _forwarded(protocol)
    unused = sorted(set(storage_options) - accepted)
    if unused:
        raise LocationError(
            f"storage options {unused} would go unused for {protocol}:// URLs ({url}); "
            f"{cls.__name__} accepts: {', '.join(sorted(accepted))}. Check the spelling "
            "(anonymous access is anon=True for S3, token='anon' for GCS)."
        )


def _forwarded(protocol: str) -> set[str]:
    """Options a file system passes on unnamed: fsspec's HTTP hands them to every aiohttp
    request (``headers``, ``auth``, ``cookies``, ``proxy``, ``ssl``, ...)."""
    if protocol not in ("http", "https"):
        return set()
    import aiohttp

    return {p.name for p in inspect.signature(aiohttp.ClientSession._request).parameters.values()
            if p.kind == p.KEYWORD_ONLY}


def _named_parameters(cls: type) -> set[str]:
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        names |= {p.name for p in inspect.signature(init).parameters.values()
                  if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"self"}
    # AbstractFileSystem handles these for every implementation
    return names | {"skip_instance_cache", "use_listings_cache", "listings_expiry_time",
                    "max_paths", "asynchronous", "loop"}


def with_timeouts(url: str, storage_options: Mapping[str, Any]) -> dict[str, Any]:
    """``storage_options`` with nest-data's connect and read timeouts for ``url``'s file
    system, unless the options already set that file system's own.

    HTTP(S): an ``aiohttp.ClientTimeout`` in ``client_kwargs`` (``sock_connect`` and
    ``sock_read``, no total: a large object may take long, a silent server may not); S3:
    botocore's ``connect_timeout`` and ``read_timeout`` in ``config_kwargs``; GCS: the
    aiohttp timeout in ``session_kwargs``.  Other protocols are returned unchanged.

    Examples
    --------
    >>> with_timeouts("s3://bucket/nest", {"anon": True})["config_kwargs"]
    {'connect_timeout': 10.0, 'read_timeout': 30.0}
    >>> with_timeouts("/data/nest", {})
    {}
    """
    from nest_data import _config

    options = dict(storage_options)
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    seconds = _config.timeouts()
    if protocol in ("http", "https", "gs", "gcs"):
        import aiohttp

        key = "client_kwargs" if protocol.startswith("http") else "session_kwargs"
        inner = dict(options.get(key) or {})
        inner.setdefault("timeout", aiohttp.ClientTimeout(
            total=None, sock_connect=seconds["connect_timeout"],
            sock_read=seconds["read_timeout"]))
        options[key] = inner
    elif protocol in ("s3", "s3a"):
        options["config_kwargs"] = {**seconds, **dict(options.get("config_kwargs") or {})}
    return options
