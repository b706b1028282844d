"""Credentials are never shown or stored.

Sentinel credentials (strings holding ``SENTINEL``) go through every public entry point
that takes ``storage_options``, against loopback servers (S3 on moto, which accepts any key
and secret; GCS on the emulator, with a raw OAuth token; plain HTTP with basic auth, a
cookie, an API-key header, and a password in the URL), in calls that work and calls that
fail.  Each test then searches everything the call could have leaked them into: the repr
and str of what it returned, the message of what it raised and of every exception chained
to it, every record of the ``nest_data`` logger at DEBUG, what the command line printed,
and every file written (destination folders, the chunk cache, exports, and every object in
the bucket).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

import nest_data
from nest_data._catalog.schema import Location
from nest_data._cli import main
from nest_data._models import EncoderSource
from nest_data._redact import MASK, redact, redact_text, redact_url, without_credentials
from nest_data._storage import make_store
from nest_data.converters import convert_ned

from .backends import KEYS
from .servers import GCSServer, HTTPServer, S3Server

MARK = "SENTINEL"
KEY, SECRET, TOKEN = "SENTINEL-KEY-7f3a", "SENTINEL-SECRET-7f3a", "SENTINEL-TOKEN-7f3a"
GCS_TOKEN = "ya29.SENTINEL-OAUTH-7f3a"
PASSWORD, URL_PASSWORD = "SENTINEL-PASS-7f3a", "SENTINEL-URLPASS-7f3a"
COOKIE, API_KEY = "session=SENTINEL-COOKIE-7f3a", "SENTINEL-APIKEY-7f3a"
UNREACHABLE = "http://127.0.0.1:1"  # nothing listens on port 1


# --------------------------------------------------------------------------------------
# Where sentinels could end up
# --------------------------------------------------------------------------------------


class Leaks:
    """Everything a call showed, raised, logged or wrote, searched for :data:`MARK`."""

    def __init__(self, caplog: pytest.LogCaptureFixture, cache_dir: Path) -> None:
        self.caplog = caplog
        self.cache_dir = cache_dir
        self.texts: list[tuple[str, str]] = []  # (where, text)
        self.folders: list[Path] = [cache_dir]
        self.objects: Callable[[], dict[str, bytes]] = dict

    def shown(self, what: str, *objects: Any) -> None:
        for obj in objects:
            self.texts += [(f"repr of {what}", repr(obj)), (f"str of {what}", str(obj))]

    def raised(self, what: str, call: Callable[[], Any]) -> BaseException:
        """Run a call that must fail; keep its exception and every one chained to it."""
        with pytest.raises(Exception) as info:
            call()
        exc: BaseException | None = info.value
        seen: set[int] = set()
        while exc is not None and id(exc) not in seen:
            seen.add(id(exc))
            self.texts += [(f"{what}: {type(exc).__name__}", str(exc)),
                           (f"{what}: repr of {type(exc).__name__}", repr(exc))]
            exc = exc.__cause__ or exc.__context__
        return info.value

    def check(self) -> None:
        """Fail, naming every place that holds a sentinel."""
        found = [f"{where}: {text[:300]}" for where, text in self.texts if MARK in text]
        for record in self.caplog.records:
            if record.name.startswith("nest_data"):
                text = record.getMessage() + (self.caplog.handler.format(record)
                                              if record.exc_info else "")
                if MARK in text:
                    found.append(f"log record {record.levelname}: {text[:300]}")
        for folder in self.folders:
            for path in sorted(folder.rglob("*")) if folder.exists() else ():
                if path.is_file() and MARK.encode() in path.read_bytes():
                    found.append(f"file {path}")
        for key, data in self.objects().items():
            if MARK.encode() in data:
                found.append(f"object {key}")
        assert not found, "credentials leaked:\n" + "\n".join(found)


@pytest.fixture
def leaks(caplog: pytest.LogCaptureFixture, tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[Leaks]:
    cache_dir = tmp_path / "cache"
    monkeypatch.setenv("NEST_DATA_CACHE_DIR", str(cache_dir))
    caplog.set_level(logging.DEBUG, logger="nest_data")
    found = Leaks(caplog, cache_dir)
    yield found
    found.check()


# --------------------------------------------------------------------------------------
# Servers holding the test entry and converted encoder weights, and their credentials
# --------------------------------------------------------------------------------------


class Served:
    """One server's root URL, sentinel credentials for it, and every object it holds.

    ``json_options`` are the credentials in a form JSON can hold (GCS: ``token="anon"``
    and the sentinel in a header instead of a credentials object), for the command line.
    """

    def __init__(self, name: str, server: Any, url: str, missing_url: str,
                 options: dict[str, Any]) -> None:
        self.name, self.server, self.options = name, server, options
        self.url, self.missing_url = url, missing_url
        self.json_options = {**options, "token": "anon"} if name == "gcs" else options

    def objects(self) -> dict[str, bytes]:
        if self.name == "http":
            base = self.server.directory.parent
            return {p.relative_to(base).as_posix(): p.read_bytes()
                    for p in base.rglob("*") if p.is_file()}
        import fsspec

        opts = ({"endpoint_url": self.server.endpoint, "key": "testing", "secret": "testing"}
                if self.name == "s3" else {"token": "anon",
                                           "endpoint_url": self.server.endpoint})
        fs = fsspec.filesystem(self.name, skip_instance_cache=True, **opts)
        return {p: bytes(fs.cat_file(p)) for p in fs.find("nest")}


@pytest.fixture(scope="module", params=["s3", "gcs", "http"])
def served(request: pytest.FixtureRequest, chunked: Path) -> Iterator[Served]:
    """The ``chunked`` root (and, with torch, weights) on a server, with sentinel
    credentials that the server accepts."""
    name = request.param
    server_cls = {"s3": S3Server, "gcs": GCSServer, "http": HTTPServer}[name]
    with server_cls() as server:
        _upload(server, chunked)
        if importlib.util.find_spec("torch") is not None:  # the encoders' tests need it
            _upload(server, request.getfixturevalue("fwrf_weights"))
        url, missing_url = server.url, server.missing_url
        if name == "s3":
            options = {"endpoint_url": server.endpoint, "key": KEY, "secret": SECRET,
                       "token": TOKEN, "client_kwargs": {"region_name": "us-east-1"}}
        elif name == "gcs":
            from google.oauth2.credentials import Credentials

            # gcsfs checks a raw token string with Google; a credentials object it uses as is
            options = {"endpoint_url": server.endpoint, "token": Credentials(token=GCS_TOKEN),
                       "session_kwargs": {"headers": {"X-Api-Key": API_KEY}}}
        else:
            # the password in the URL; an API key and a cookie in the headers
            url, missing_url = (u.replace("http://", f"http://nest-user:{URL_PASSWORD}@")
                                for u in (url, missing_url))
            options = {"headers": {"X-Api-Key": API_KEY, "Cookie": COOKIE}}
        yield Served(name, server, url, missing_url, options)


def _upload(server: Any, folder: Path) -> None:
    """Copy a local root to a server; empty files (a writer's lock) are left out, as the GCS
    emulator refuses them."""
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.stat().st_size:
            server.tamper(path.relative_to(folder).as_posix(), path.read_bytes())


def _watch(leaks: Leaks, served: Served) -> None:
    leaks.objects = served.objects


# --------------------------------------------------------------------------------------
# What is shown: reprs of locations, stores, options
# --------------------------------------------------------------------------------------


def test_redaction_masks_every_kind_of_credential(tmp_path: Path) -> None:
    import aiohttp

    token_file = tmp_path / "creds.json"
    token_file.write_text(json.dumps({"refresh_token": TOKEN}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # aiohttp 4 drops BasicAuth
        basic = aiohttp.BasicAuth("nest-user", PASSWORD)
    options = {
        "key": KEY, "secret": SECRET, "token": TOKEN, "password": PASSWORD,
        "session_token": TOKEN, "client_secret": SECRET, "aws_access_key_id": KEY,
        "my_secret_thing": SECRET, "anon": False, "endpoint_url": "https://minio.lab:9000",
        "client_kwargs": {"aws_secret_access_key": SECRET, "region_name": "eu-west-1",
                          "headers": {"authorization": f"Bearer {TOKEN}", "COOKIE": COOKIE,
                                      "Proxy-Authorization": PASSWORD, "Accept": "*/*"},
                          "auth": basic},
        "config_kwargs": {"aws_session_token": TOKEN, "connect_timeout": 5},
        "headers": {"Authorization": f"Bearer {TOKEN}"},
        "auth": ("nest-user", PASSWORD),
        "proxy": f"http://proxy-user:{PASSWORD}@proxy.lab:3128",
        "credentials": {"type": "service_account", "private_key": SECRET},
    }
    shown = redact(options)
    text = repr(shown)
    assert MARK not in text
    assert shown["anon"] is False and shown["endpoint_url"] == "https://minio.lab:9000"
    assert shown["client_kwargs"]["region_name"] == "eu-west-1"
    assert shown["client_kwargs"]["headers"]["Accept"] == "*/*"
    assert shown["config_kwargs"]["connect_timeout"] == 5
    assert shown["auth"] == ("nest-user", MASK)  # the login is shown, the password never
    assert shown["client_kwargs"]["auth"].login == "nest-user"
    assert shown["proxy"] == f"http://proxy-user:{MASK}@proxy.lab:3128"
    assert options["secret"] == SECRET  # a copy: the options themselves are unchanged
    # a token file's path may be shown, never its contents; gcsfs's modes are shown
    assert redact({"token": str(token_file)}) == {"token": str(token_file)}
    assert redact({"token": "anon"}) == {"token": "anon"}
    assert redact({"token": "/no/such/creds.json"}) == {"token": MASK}
    # URLs: userinfo and signed queries
    assert redact_url(f"https://u:{PASSWORD}@h/x") == f"https://u:{MASK}@h/x"
    assert redact_url(f"https://{TOKEN}@h/x") == f"https://{MASK}@h/x"
    for query in (f"X-Amz-Signature={SECRET}", f"sig={SECRET}", f"token={TOKEN}",
                  f"X-Goog-Credential={KEY}"):
        assert MARK not in redact_url(f"https://h/x.zarr?{query}&keep=1")
    assert redact_text(f"GET https://h/x?sig={SECRET} failed for {KEY}", [KEY]) == \
        f"GET https://h/x?sig={MASK} failed for {MASK}"
    kept, left_out = without_credentials(options)
    assert MARK not in repr(kept) and "credentials" in left_out and "proxy" in left_out
    assert kept["endpoint_url"] == "https://minio.lab:9000"


def test_reprs_of_locations_stores_and_encoders_mask_credentials(leaks: Leaks) -> None:
    options = {"key": KEY, "secret": SECRET, "client_kwargs": {"endpoint_url": UNREACHABLE}}
    cat = nest_data.catalog()
    cat.add_location("lab", "s3://lab/nest", options)
    root = cat.location("lab", {"token": TOKEN})
    assert root.storage_options["secret"] == SECRET  # kept for use, only never shown
    assert "'key': '***'" in repr(root) and "s3://lab/nest" in repr(root)
    url_root = cat.location(f"https://nest-user:{URL_PASSWORD}@data.lab/nest",
                            {"headers": {"Authorization": f"Bearer {TOKEN}"}})
    leaks.shown("a location", cat.locations["lab"], Location("x", "s3://x", options))
    leaks.shown("a root", root, url_root, cat)
    leaks.shown("a store", make_store("s3://lab/nest/x.zarr", {"anon": False, "key": KEY,
                                                                 "secret": SECRET}),
                make_store(f"https://u:{URL_PASSWORD}@data.lab/nest/x.zarr"))
    leaks.shown("an encoder source", EncoderSource(
        "fmri", "nsd", "fwrf", "a.u.", "s3://lab/nest/weights",
        storage_options={"secret": SECRET}))


def test_a_file_system_error_quoting_a_credential_is_masked(leaks: Leaks) -> None:
    """A file system's message may quote an option's value (a key in a 403, a signed URL):
    the store's error and log records mask it, and name the option's kind instead."""
    import asyncio
    from types import SimpleNamespace

    from zarr.core.buffer import default_buffer_prototype

    from nest_data._storage import NestStore

    class Refusing:
        fs = SimpleNamespace(storage_options={"key": KEY, "secret": SECRET})

        async def get(self, *args: Any) -> None:
            raise PermissionError(f"403 for access key {KEY} at https://h/x?X-Amz-Signature="
                                  f"{SECRET}")

    store = NestStore(Refusing(), url=f"https://u:{URL_PASSWORD}@h/x.zarr")  # type: ignore[arg-type]
    error = leaks.raised("a refused read", lambda: asyncio.run(
        store.get("zarr.json", default_buffer_prototype())))
    assert "access was denied" in str(error) and f"access key {MASK}" in str(error)


# --------------------------------------------------------------------------------------
# Reading: open, open_many, open_store, open_collection, the xarray engine; the cache
# --------------------------------------------------------------------------------------


def test_reads_keep_credentials_out(served: Served, leaks: Leaks) -> None:
    _watch(leaks, served)
    kw = {"location": served.url, "storage_options": served.options}
    da = nest_data.open(**KEYS, **kw, cache=True)
    assert float(da[0, 0]) == float(da.values[0, 0])
    many = nest_data.open_many(imageset="things", subject=1, roi=["V1"], **kw)
    tree = nest_data.open_collection(**kw, imageset="things")
    url = nest_data.catalog().location(served.url).store(nest_data.catalog().resolve(**KEYS))
    store = nest_data.open_store(url, storage_options=served.options, verify=True)
    ds = xr.open_dataset(url, engine="nest", storage_options=served.options, verify=True)
    np.testing.assert_array_equal(store.values, ds["responses"].values)
    leaks.shown("an opened entry", da, da.attrs, da.encoding, da.data, many, tree, store, ds,
                ds.encoding, ds["responses"].encoding)
    assert list(leaks.cache_dir.rglob("*")), "the cache was not used, so not searched"


def test_failed_reads_keep_credentials_out(served: Served, leaks: Leaks) -> None:
    _watch(leaks, served)
    options = served.options
    leaks.raised("a root that does not exist", lambda: nest_data.open(
        **KEYS, location=served.missing_url, storage_options=options))
    leaks.raised("an unknown key", lambda: nest_data.open(
        imageset="things", subject=9, roi="V1", location=served.url, storage_options=options))
    leaks.raised("an entry not at the location", lambda: nest_data.open(
        imageset="things", subject=1, roi="FFA-1", location=served.url,
        storage_options=options))
    leaks.raised("a store that does not exist", lambda: nest_data.open_store(
        served.url + "/nothing.zarr", storage_options=options))
    leaks.raised("an unused option", lambda: nest_data.open_store(
        served.url + "/x.zarr", storage_options={**options, "bogus_secret": SECRET}))
    if served.name == "http":
        unreachable = f"http://nest-user:{URL_PASSWORD}@127.0.0.1:1/root"
        leaks.raised("an unreachable server", lambda: nest_data.open(
            **KEYS, location=unreachable, storage_options=options))
        leaks.raised("an unreachable server (engine)", lambda: xr.open_dataset(
            unreachable + "/x.zarr", engine="nest", storage_options=options))


def test_unreachable_endpoint_keeps_credentials_out(leaks: Leaks) -> None:
    options = {"endpoint_url": UNREACHABLE, "key": KEY, "secret": SECRET, "token": TOKEN,
               "client_kwargs": {"region_name": "us-east-1"},
               "config_kwargs": {"retries": {"max_attempts": 1}}}
    error = leaks.raised("an unreachable S3 endpoint", lambda: nest_data.open(
        **KEYS, location="s3://nest/root", storage_options=options))
    assert "Could not connect to the endpoint URL" in str(error)
    leaks.raised("a non-dict storage_options", lambda: nest_data.open(
        **KEYS, location="s3://nest/root", storage_options=SECRET))  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------
# Writing and checking: mirror, verify, index, export, convert, generate, encode
# --------------------------------------------------------------------------------------


def test_mirror_verify_and_export_keep_credentials_out(served: Served, leaks: Leaks,
                                                       tmp_path: Path) -> None:
    _watch(leaks, served)
    leaks.folders += [tmp_path]
    kw = {"location": served.url, "storage_options": served.options}
    report = nest_data.mirror(tmp_path / "mirror", **KEYS, **kw, show_progress=False)
    assert report.copied
    checked = nest_data.verify(served.url, storage_options=served.options,
                               show_progress=False)
    leaks.shown("reports", report, checked)
    cat = nest_data.catalog().search(**KEYS)
    if served.name == "http":  # a URL with a password in it cannot be exported
        error = leaks.raised("an export of a URL with a password", lambda: cat.to_intake_esm(
            tmp_path / "esm", **kw))
        assert "carries a credential" in str(error)
        leaks.raised("an index at an HTTP root", lambda: nest_data.build_index(
            served.url, storage_options=served.options))
        return
    spec = json.loads(cat.to_intake_esm(tmp_path / "esm", **kw).read_text())
    assert "key" in spec["storage_options_to_supply"] or "token" in spec[
        "storage_options_to_supply"]
    assert "to_dataset_dict(storage_options=" in spec["description"]
    assert spec["storage_options"]["endpoint_url"] == served.server.endpoint
    index = nest_data.build_index(served.url, storage_options=served.options,
                                  show_progress=False)
    leaks.shown("an index", index)


def test_convert_to_a_bucket_keeps_credentials_out(served: Served, leaks: Leaks,
                                                   ned_src: Path) -> None:
    if served.name == "http":
        pytest.skip("HTTP locations are read only")
    _watch(leaks, served)
    dest = served.url.replace("/root", "/converted")
    written = convert_ned(ned_src, dest, **KEYS, storage_options=served.options,
                          show_progress=False)
    leaks.shown("a conversion report", written)
    leaks.raised("a conversion to a missing bucket", lambda: convert_ned(
        ned_src, served.missing_url, **KEYS, storage_options=served.options,
        show_progress=False))


def test_encode_and_generate_keep_credentials_out(served: Served, leaks: Leaks,
                                                  tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from nest_data.synthetic import test_images, write_image_zarr

    _watch(leaks, served)
    leaks.folders += [tmp_path]
    images = test_images(4, (64, 64), seed=2)
    kw = {"subject": 1, "roi": "V1", "location": served.url,
          "storage_options": served.options}  # GCS: a credentials object, used as it is
    da = nest_data.encode(images, **kw, show_progress=False)
    leaks.shown("encoded responses", da, da.attrs)
    write_image_zarr(tmp_path / "images.zarr", images)
    dest = (tmp_path / "generated" if served.name == "http"
            else served.url.replace("/root", "/generated"))
    url = nest_data.generate(tmp_path / "images.zarr", dest, imageset="mine", **kw,
                             chunk_images=2, show_progress=False)
    leaks.shown("a generated store", url)
    leaks.raised("weights that are not there", lambda: nest_data.encode(
        images, subject=2, roi="V1", location=served.url, storage_options=served.options))


# --------------------------------------------------------------------------------------
# The command line: --storage-option
# --------------------------------------------------------------------------------------


def _cli_options(served: Served) -> list[str]:
    """``json_options`` as ``--storage-option KEY=VALUE`` pairs."""
    out = []
    for name, value in served.json_options.items():
        text = value if isinstance(value, str) else json.dumps(value)
        out += ["--storage-option", f"{name}={text}"]
    return out


def test_cli_keeps_credentials_out(served: Served, leaks: Leaks, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    _watch(leaks, served)
    leaks.folders += [tmp_path]
    opts = _cli_options(served)
    assert main(["--verbose", "verify", served.url, *opts]) == 0
    assert main(["mirror", str(tmp_path / "m"), "--location", served.url, "--imageset",
                 "things", "--subject", "1", "--roi", "V1", *opts]) == 0
    assert main(["catalog", "--location", served.url, "--subject", "1", "--imageset",
                 "things", *opts]) == 0
    if served.name != "http":
        assert main(["catalog", "--location", served.url, "--subject", "1", "--imageset",
                     "things", "--intake-esm", str(tmp_path / "esm"), *opts]) == 0
    # a missing bucket: an error message (or, where the command does not catch the file
    # system's error, the exception itself)
    for argv in (["verify", served.missing_url], ["mirror", str(tmp_path / "m2"), "--location",
                 served.missing_url, "--imageset", "things", "--subject", "1", "--roi", "V1"]):
        try:
            assert main([*argv, *opts]) != 0
        except Exception:
            leaks.raised(f"nest-data {argv[0]}", lambda argv=argv: main([*argv, *opts]))
    out = capsys.readouterr()
    leaks.texts += [("the command line's output", out.out), ("its errors", out.err)]


@pytest.fixture(autouse=True)
def _gcs_raw_token_is_not_refreshed(monkeypatch: pytest.MonkeyPatch) -> None:
    """gcsfs treats a raw token as valid; nothing here should reach Google to refresh it."""
    monkeypatch.setenv("NO_GCE_CHECK", "true")

