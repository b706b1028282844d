"""Credentials kept out of everything nest-data shows, logs and writes.

One rule decides what is a credential, and every place that shows storage options or a URL
asks it:

- an option (at any depth: ``client_kwargs``, ``config_kwargs``, ``headers``, ...) whose
  name is ``key``, ``aws_*``, or contains ``secret``, ``token``, ``password``, ``passwd``,
  ``credential``, ``signature``, ``api_key``/``apikey``, ``private_key`` or
  ``account_key``, and the HTTP headers ``Authorization``, ``Proxy-Authorization``,
  ``Cookie`` and ``X-Api-Key`` (names compared without case): its value is shown as
  ``***``.  A value that names an existing file (gcsfs's ``token="/path/creds.json"``) and
  gcsfs's access modes (``token="anon"``, ``"google_default"``, ``"cache"``, ``"cloud"``,
  ``"browser"``) are shown: they say where a credential is, not what it is;
- an ``auth`` option (``aiohttp.BasicAuth`` or a ``(login, password)`` pair): the login
  is shown, the password never;
- a URL: the password of ``user:password@`` (a bare ``token@`` too) and the values of
  query parameters such as ``X-Amz-Signature``, ``sig`` or ``token``.

:func:`redact` gives storage options as they may be shown, :func:`redact_url` a URL,
:func:`redact_text` any text (an exception's message, a log line).  Every
:class:`~nest_data.errors.NestDataError` message and every record of the ``nest_data``
logger passes through :func:`redact_text` (this module installs the logger's filter when
imported); a message that quotes a file system's exception gives its
:func:`describe_error`, which also masks the option values themselves wherever they appear.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["MASK", "MaskedError", "describe_error", "is_secret_name", "masked_error", "redact",
           "redact_text", "redact_url", "secret_values", "without_credentials"]

#: What a credential is shown as.
MASK = "***"

_NAMES = frozenset({"key", "authorization", "proxy-authorization", "cookie", "cookies",
                    "x-api-key", "sig", "code"})
_PARTS = ("secret", "token", "password", "passwd", "credential", "signature", "api_key",
          "apikey", "private_key", "account_key")
#: gcsfs's ``token=`` access modes: they name a way to log in, not a credential.
_MODES = frozenset({"anon", "google_default", "cache", "cloud", "browser"})
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>()\[\]{},]+")


def is_secret_name(name: object) -> bool:
    """Whether an option, header or query parameter of this name holds a credential.

    Examples
    --------
    >>> [is_secret_name(n) for n in ("secret", "AWS_SESSION_TOKEN", "Authorization",
    ...                                "endpoint_url", "anon")]
    [True, True, True, False, False]
    """
    text = str(name).lower()
    return text in _NAMES or text.startswith("aws_") or any(p in text for p in _PARTS)


def redact(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """A copy of storage options with every credential shown as ``"***"``.

    Nested dicts (``client_kwargs``, ``config_kwargs``, HTTP ``headers``, ...) are redacted
    the same way; an ``auth`` keeps its login and loses its password; URLs among the values
    lose their passwords and signatures.  The options themselves are not changed.

    Parameters
    ----------
    options : dict or None
        fsspec storage options, as given to ``storage_options=``.

    Returns
    -------
    dict
        The options to show (in a repr, a log record, a message).

    Examples
    --------
    >>> redact({"key": "AKIAEXAMPLE", "secret": "s3cr3t", "anon": False,
    ...         "client_kwargs": {"endpoint_url": "https://minio.lab:9000",
    ...                           "headers": {"Authorization": "Bearer abc"}}})
    ... # doctest: +NORMALIZE_WHITESPACE
    {'key': '***', 'secret': '***', 'anon': False,
     'client_kwargs': {'endpoint_url': 'https://minio.lab:9000',
                       'headers': {'Authorization': '***'}}}
    >>> redact({"auth": ("alice", "wonderland"), "token": "anon"})
    {'auth': ('alice', '***'), 'token': 'anon'}
    """
    return _mapping(options or {}, lambda _: None)


def secret_values(options: Mapping[str, Any] | None) -> list[str]:
    """The credential strings among storage options (what :func:`redact` masks), longest
    first: to mask them wherever a file system's message quotes them.

    Examples
    --------
    >>> secret_values({"key": "AKIAEXAMPLE", "client_kwargs": {"region_name": "eu"},
    ...                "auth": ("alice", "wonderland")})
    ['AKIAEXAMPLE', 'wonderland']
    """
    found: list[str] = []
    _mapping(options or {}, found.append)
    return sorted({s for s in found if s}, key=len, reverse=True)


def without_credentials(options: Mapping[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
    """Storage options that may be written to a file, and the names of those left out.

    What :func:`redact` would mask is left out (an ``auth`` whole), not written masked: a
    file that says ``secret="***"`` would make its reader log in with ``***``.  Nested names
    are dotted (``client_kwargs.headers.Authorization``).

    Examples
    --------
    >>> without_credentials({"key": "AKIAEXAMPLE", "endpoint_url": "https://minio.lab",
    ...                      "client_kwargs": {"headers": {"Cookie": "c"}, "region_name": "eu"}})
    ({'endpoint_url': 'https://minio.lab', 'client_kwargs': {'region_name': 'eu'}}, \
['client_kwargs.headers.Cookie', 'key'])
    """
    left_out: list[str] = []

    def keep(shown: Mapping[Any, Any], given: Mapping[Any, Any], prefix: str) -> dict[Any, Any]:
        out = {}
        for name, value in shown.items():
            if isinstance(value, Mapping) and isinstance(given[name], Mapping):
                inner = keep(value, given[name], f"{prefix}{name}.")
                if inner or not given[name]:
                    out[name] = inner
            elif value is given[name] or value == given[name]:
                out[name] = value
            else:
                left_out.append(f"{prefix}{name}")
        return out

    given = dict(options or {})
    kept = keep(redact(given), given, "")
    return kept, sorted(left_out)


def redact_url(url: str | os.PathLike[str]) -> str:
    """A URL as it may be shown: no password, no signature or token in its query.

    Examples
    --------
    >>> redact_url("https://alice:wonderland@data.lab/nest")
    'https://alice:***@data.lab/nest'
    >>> redact_url("https://bucket.s3.amazonaws.com/x?X-Amz-Signature=abc&X-Amz-Expires=60")
    'https://bucket.s3.amazonaws.com/x?X-Amz-Signature=***&X-Amz-Expires=60'
    >>> redact_url("/data/nest")
    '/data/nest'
    """
    text = os.fspath(url)
    if "://" not in text or ("@" not in text and "?" not in text):
        return text
    try:
        parts = urlsplit(text)
    except ValueError:  # not a URL after all (an unbalanced '[' in a host, say)
        return text
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        login, colon, _ = userinfo.partition(":")
        netloc = f"{login}:{MASK}@{host}" if colon else f"{MASK}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(is_secret_name(k) for k, _ in pairs):
            query = urlencode([(k, MASK if is_secret_name(k) else v) for k, v in pairs],
                              safe="*/:")
    if (netloc, query) == (parts.netloc, parts.query):
        return text
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """Text (a message, a log line) with the credentials of its URLs masked, and every
    string of ``secrets`` (see :func:`secret_values`) replaced by ``"***"``.

    Examples
    --------
    >>> redact_text("cannot reach https://u:pw@host/x (403 for key AKIAEXAMPLE)",
    ...             ["AKIAEXAMPLE"])
    'cannot reach https://u:***@host/x (403 for key ***)'
    """
    for secret in secrets:
        text = text.replace(secret, MASK)
    if "://" in text:
        text = _URL.sub(lambda m: redact_url(m.group(0)), text)
    return text


def describe_error(exc: BaseException, options: Mapping[str, Any] | None = None) -> str:
    """``"TypeName: message"`` of a file system's exception, for a message of nest-data's
    own: credentials in it masked, both in URLs and wherever an option's value appears.

    Examples
    --------
    >>> describe_error(PermissionError("denied for https://u:pw@host/x"), {"password": "pw"})
    'PermissionError: denied for https://u:***@host/x'
    """
    return redact_text(f"{type(exc).__name__}: {exc}", secret_values(options))


class MaskedError(Exception):
    """A file system's exception whose message quoted a credential, with it masked: it
    stands in for the original as the cause of the error nest-data raises, and keeps the
    original's traceback (see :func:`masked_error`)."""


def masked_error(exc: BaseException, options: Mapping[str, Any] | None = None
                 ) -> BaseException:
    """The exception to chain (``raise ... from``) in place of a file system's ``exc``:
    ``exc`` itself when its message holds no credential, else a :class:`MaskedError` with
    :func:`describe_error`'s message and ``exc``'s traceback (its own causes dropped, as
    they may quote the same credential).

    Examples
    --------
    >>> masked_error(PermissionError("denied for key AKIAEXAMPLE"), {"key": "AKIAEXAMPLE"})
    MaskedError('PermissionError: denied for key ***')
    >>> masked_error(TimeoutError("no answer"), {"key": "AKIAEXAMPLE"})
    TimeoutError('no answer')
    """
    text = describe_error(exc, options)
    if text == f"{type(exc).__name__}: {exc}":
        return exc
    return MaskedError(text).with_traceback(exc.__traceback__)


# --------------------------------------------------------------------------------------
# The one walk over storage options: a redacted copy, and the credentials it masked
# --------------------------------------------------------------------------------------


def _mapping(options: Mapping[Any, Any], found: Callable[[str], None]) -> dict[Any, Any]:
    return {name: _value(name, value, found) for name, value in options.items()}


def _value(name: Any, value: Any, found: Callable[[str], None]) -> Any:
    lowered = str(name).lower()
    if lowered == "auth" or lowered.endswith("_auth"):
        return _auth(value, found)
    if is_secret_name(name) and not (value is None or isinstance(value, bool)
                                     or _shown_as_is(value)):
        for text in _strings(value):
            found(text)
        return MASK
    if isinstance(value, Mapping):
        return _mapping(value, found)
    if isinstance(value, str):
        return redact_url(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_value("", v, found) for v in value)
    return value


def _strings(value: Any) -> Iterator[str]:
    """Every string inside a credential (a service account's dict, a list of tokens)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


def _auth(value: Any, found: Callable[[str], None]) -> Any:
    """An ``auth`` option: the login shown, the password masked."""
    if value is None:
        return None
    if isinstance(value, tuple) and len(value) >= 2:
        if isinstance(value[1], str):
            found(value[1])
        if hasattr(value, "_replace"):  # aiohttp.BasicAuth, a named tuple
            return value._replace(password=MASK)
        return (value[0], MASK, *value[2:])
    if isinstance(value, list) and len(value) == 2:
        if isinstance(value[1], str):
            found(value[1])
        return [value[0], MASK]
    if isinstance(value, str):
        found(value)
    return MASK


def _shown_as_is(value: Any) -> bool:
    """A credential option's value that says where a credential is, not what it is."""
    if not isinstance(value, str):
        return False
    if value in _MODES:
        return True
    try:
        return os.path.isfile(value)
    except (OSError, ValueError):
        return False


class _RedactingFilter(logging.Filter):
    """Masks URL credentials in the ``nest_data`` logger's records (its one filter)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def _install_filter() -> None:
    logger = logging.getLogger("nest_data")
    if not any(isinstance(f, _RedactingFilter) for f in logger.filters):
        logger.addFilter(_RedactingFilter())


_install_filter()
