"""The catalog's schema: models, entries, locations, resolved roots, and their YAML form."""

from __future__ import annotations

import os
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nest_data import _config
from nest_data._redact import redact, redact_url
from nest_data.errors import CatalogError, LocationError

KEYS = ("modality", "train_dataset", "model", "imageset", "subject", "roi")
MODEL_KEYS = ("modality", "train_dataset", "model")

@dataclass(frozen=True)
class ModelSpec:
    """One encoder family of the catalog (a modality/train_dataset/model triple)."""

    modality: str
    train_dataset: str
    model: str
    subjects: tuple[int, ...]
    rois: tuple[str, ...]
    imagesets: tuple[str, ...]
    path: str
    dims: tuple[str, ...]
    sizes: Mapping[str, int] = field(default_factory=dict)
    n_voxels: Mapping[int, Mapping[str, int]] = field(default_factory=dict)
    units: str = ""
    description: str = ""
    weights_path: str = ""
    backbone_path: str = ""
    #: ROIs select vertices of one whole-surface store; ``roi=None`` is the whole surface.
    surface: bool = False
    #: Chosen when an ROI is valid for several models and none is named.
    default: bool = False

    @property
    def name(self) -> str:
        """``modality/train_dataset/model``."""
        return f"{self.modality}/{self.train_dataset}/{self.model}"


@dataclass(frozen=True)
class Entry:
    """One store of the collection: a full catalog key and the store's relative path.

    Examples
    --------
    >>> import nest_data
    >>> entry = nest_data.catalog().search(imageset="things", subject=1, roi="V1")[0]
    >>> entry.path
    'modality-fmri/train_dataset-nsd/model-fwrf/imageset-things/sub-01_roi-V1.zarr'
    """

    modality: str
    train_dataset: str
    model: str
    imageset: str
    subject: int
    roi: str | None
    path: str
    dims: tuple[str, ...]

    @classmethod
    def of(cls, model: ModelSpec, imageset: str, subject: int, roi: str | None) -> Entry:
        """The entry of ``model`` for one image set, subject and ROI (path from the template)."""
        fields = {"modality": model.modality, "train_dataset": model.train_dataset,
                  "model": model.model, "imageset": imageset, "subject": subject, "roi": roi}
        return cls(model.modality, model.train_dataset, model.model, imageset, subject, roi,
                   path=model.path.format(**fields), dims=model.dims)

    @property
    def key(self) -> dict[str, Any]:
        """The entry's catalog key as a dict."""
        return {k: getattr(self, k) for k in KEYS}

    @property
    def label(self) -> str:
        """A short human-readable name, e.g. ``fmri/nsd/fwrf things sub-01 V1``."""
        roi = f" {self.roi}" if self.roi else ""
        return (f"{self.modality}/{self.train_dataset}/{self.model} {self.imageset} "
                f"sub-{self.subject:02d}{roi}")


@dataclass(frozen=True, repr=False)
class Location:
    """A named root that holds stores: a local folder or any fsspec URL.

    ``url`` may contain ``{cache_dir}`` (nest-data's cache directory) and ``{env:NAME}``
    (an environment variable), both resolved when the location is used.  Its repr shows
    credentials masked (:func:`nest_data._redact.redact`).
    """

    name: str
    url: str
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""

    def __repr__(self) -> str:
        return (f"Location(name={self.name!r}, url={redact_url(self.url)!r}, "
                f"storage_options={redact(self.storage_options)!r}, "
                f"description={self.description!r})")

    def resolve(self) -> str:
        """Return the root URL with ``{cache_dir}`` and ``{env:NAME}`` filled in."""
        def env(match: re.Match[str]) -> str:
            var = match.group(1)
            value = os.environ.get(var)
            if not value:
                raise LocationError(
                    f"location {self.name!r} reads its root from the environment variable "
                    f"{var}, which is not set. Set it to the folder or URL that holds the "
                    f"stores (export {var}=/path/to/nest-data), or pass location='demo' after "
                    "running `nest-data demo`, or location='<folder or URL>'."
                )
            return value

        url = re.sub(r"\{env:([A-Za-z_][A-Za-z0-9_]*)\}", env, self.url)
        return url.replace("{cache_dir}", _config.cache_dir().as_posix())


@dataclass(frozen=True, repr=False)
class Root:
    """A location resolved once: the root URL of its stores, their storage options, its name.

    :meth:`Catalog.location` makes one at the API edge; what reads and writes below takes a
    ``Root`` (or a URL and options), never a catalog.  Its repr (and str) shows credentials
    masked: the storage options through :func:`nest_data._redact.redact`, the URL and name
    through :func:`nest_data._redact.redact_url`.

    Examples
    --------
    >>> import nest_data
    >>> cat = nest_data.catalog()
    >>> root = cat.location("demo")
    >>> root.name
    'demo'
    >>> root.store(cat.resolve(imageset="things", subject=1, roi="V1")).endswith(
    ...     "imageset-things/sub-01_roi-V1.zarr")
    True
    >>> cat.location("s3://lab/n", {"key": "AKIAEXAMPLE", "secret": "s3cr3t"})
    Root(url='s3://lab/n', storage_options={'key': '***', 'secret': '***'}, name='s3://lab/n')
    """

    url: str
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    name: str = ""

    def __repr__(self) -> str:
        return (f"Root(url={redact_url(self.url)!r}, "
                f"storage_options={redact(self.storage_options)!r}, "
                f"name={redact_url(self.name)!r})")

    def store(self, entry: Entry) -> str:
        """The URL of an entry's store under this root."""
        return self.join(entry.path)

    def join(self, path: str) -> str:
        """The URL of ``path`` (a store or a weights folder, from the catalog) under this root."""
        return self.url.rstrip("/") + "/" + path.lstrip("/")


#: What a model, ROI or image set name may be: it becomes part of store paths.
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.+-]*"


def is_valid_name(name: Any) -> bool:
    """Whether ``name`` can be a catalog name (a part of a path: no ``/``, no ``..``).

    Examples
    --------
    >>> is_valid_name("my_stimuli"), is_valid_name("../up"), is_valid_name("my stimuli")
    (True, False, False)
    """
    return bool(re.fullmatch(NAME_PATTERN, str(name))) and ".." not in str(name)


def check_template(template: str, what: str, model: str, source: str) -> None:
    """A path template must name only catalog keys and stay inside its location's root."""
    if not template:
        return
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise CatalogError(f"catalog {source}: model {model!r} has a malformed {what} "
                           f"{template!r} ({exc}); fix its braces") from exc
    unknown = sorted(fields - set(KEYS))
    if unknown:
        raise CatalogError(f"catalog {source}: model {model!r} {what} {template!r} uses "
                           f"{{{unknown[0]}}}, which is not a catalog key; valid: "
                           + ", ".join(f"{{{k}}}" for k in KEYS))
    try:
        sample = template.format(modality="m", train_dataset="d", model="x", imageset="s",
                                 subject=1, roi="r")
    except (ValueError, IndexError) as exc:
        raise CatalogError(f"catalog {source}: model {model!r} {what} {template!r} cannot be "
                           f"filled in ({exc}); only {{subject}} takes a number format such "
                           "as {subject:02d}") from exc
    parts = sample.split("/")
    if (sample.startswith(("/", "~")) or "://" in sample or "\\" in sample or ".." in parts
            or ":" in parts[0]):
        raise CatalogError(f"catalog {source}: model {model!r} {what} {template!r} leaves its "
                           "location's root (an absolute path, '..', '~', a drive or a URL); "
                           "give a relative path such as 'modality-{modality}/.../sub-"
                           "{subject:02d}.zarr'")


def model_from_doc(doc: Any, source: str) -> ModelSpec:
    required = {"modality", "train_dataset", "model", "subjects", "imagesets", "path", "dims"}
    if not isinstance(doc, Mapping) or required - set(doc):
        missing = sorted(required - set(doc)) if isinstance(doc, Mapping) else sorted(required)
        raise CatalogError(f"catalog {source}: every item of 'models' needs keys "
                           f"{sorted(required)}; missing {missing}")
    for what in ("path", "weights_path", "backbone_path"):
        check_template(str(doc.get(what) or ""), what, str(doc.get("model")), source)
    names = [doc["modality"], doc["train_dataset"], doc["model"], *(doc.get("rois") or ()),
             *doc["imagesets"]]
    bad = [str(n) for n in names if not is_valid_name(n)]
    if bad:
        raise CatalogError(f"catalog {source}: model {doc.get('model')!r} has the names "
                           f"{bad}, which cannot be part of a path; use letters, digits and "
                           "'_', '-', '.', '+' only (no '/', no '..')")
    try:
        return ModelSpec(
            modality=str(doc["modality"]), train_dataset=str(doc["train_dataset"]),
            model=str(doc["model"]), subjects=tuple(int(s) for s in doc["subjects"]),
            rois=tuple(str(r) for r in doc.get("rois") or ()),
            imagesets=tuple(doc["imagesets"]), path=str(doc["path"]),
            dims=tuple(doc["dims"]), sizes=dict(doc.get("sizes") or {}),
            n_voxels={int(s): dict(v) for s, v in (doc.get("n_voxels") or {}).items()},
            units=str(doc.get("units", "")), description=str(doc.get("description", "")).strip(),
            weights_path=str(doc.get("weights_path", "")),
            backbone_path=str(doc.get("backbone_path", "")),
            surface=bool(doc.get("surface", False)), default=bool(doc.get("default", False)),
        )
    except (TypeError, ValueError) as exc:
        raise CatalogError(f"catalog {source}: malformed model {doc.get('model')!r}: {exc}"
                           ) from exc


def location_from_doc(name: str, doc: Any, source: str) -> Location:
    if isinstance(doc, str):
        doc = {"url": doc}
    if not isinstance(doc, Mapping) or "url" not in doc:
        raise CatalogError(f"catalog {source}: location {name!r} needs a 'url' (a folder or "
                           "fsspec URL) and optionally 'storage_options'")
    return Location(name, str(doc["url"]), dict(doc.get("storage_options") or {}),
                    str(doc.get("description", "")).strip())
