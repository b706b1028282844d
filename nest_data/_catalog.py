"""The catalog: vocabulary, entries, locations, search, intake-esm export."""

from __future__ import annotations

import difflib
import functools
import json
import logging
import os
import re
import string
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import yaml

from nest_data import _config
from nest_data._storage import check_storage_options
from nest_data.catalogs import catalog_path
from nest_data.errors import AmbiguousKeyError, CatalogError, LocationError, UnknownKeyError

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger("nest_data")

KEYS = ("modality", "train_dataset", "model", "imageset", "subject", "roi")
MODEL_KEYS = ("modality", "train_dataset", "model")

__all__ = ["KEYS", "Catalog", "Entry", "Location", "ModelSpec", "catalog"]


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


@dataclass(frozen=True)
class Location:
    """A named root that holds stores: a local folder or any fsspec URL.

    ``url`` may contain ``{cache_dir}`` (nest-data's cache directory) and ``{env:NAME}``
    (an environment variable), both resolved when the location is used.
    """

    name: str
    url: str
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""

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


@dataclass(frozen=True)
class Root:
    """A location resolved once: the root URL of its stores, their storage options, its name.

    :meth:`Catalog.location` makes one at the API edge; what reads and writes below takes a
    ``Root`` (or a URL and options), never a catalog.

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
    """

    url: str
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    name: str = ""

    def store(self, entry: Entry) -> str:
        """The URL of an entry's store under this root."""
        return self.join(entry.path)

    def join(self, path: str) -> str:
        """The URL of ``path`` (a store or a weights folder, from the catalog) under this root."""
        return self.url.rstrip("/") + "/" + path.lstrip("/")


class Catalog:
    """The NEST collection: which entries exist and where their stores live.

    Build one with :func:`nest_data.catalog`.  A catalog iterates over its
    :class:`Entry` objects, filters them with :meth:`search`, shows them as a pandas table
    with :attr:`df`; :func:`nest_data.open` takes one as ``catalog=``.

    Examples
    --------
    >>> import nest_data
    >>> cat = nest_data.catalog()
    >>> len(cat)
    1350
    >>> cat.search(roi="V1", subject=[1, 2]).df[["imageset", "subject", "roi"]].shape
    (6, 3)
    """

    def __init__(
        self,
        models: Sequence[ModelSpec],
        imagesets: Mapping[str, Mapping[str, Any]],
        locations: Mapping[str, Location],
        *,
        name: str = "nest",
        version: str = "",
        sources: Sequence[str] = (),
        entries: Sequence[Entry] | None = None,
    ) -> None:
        self.models = tuple(models)
        self.imagesets = dict(imagesets)
        self.locations = dict(locations)
        self.name = name
        self.version = version
        self.sources = tuple(sources)
        self._entries = tuple(entries) if entries is not None else tuple(self._all_entries())

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_yaml(cls, source: str | os.PathLike[str]) -> Catalog:
        """Read a catalog YAML file (see ``catalog/nest.yaml`` for the schema)."""
        path = Path(source)
        try:
            parsed = _parse_yaml(str(path), str(path.resolve()), path.stat().st_mtime_ns)
        except OSError as exc:
            raise CatalogError(f"cannot read catalog file {path}: {exc}") from exc
        except yaml.YAMLError as exc:
            raise CatalogError(f"catalog file {path} is not valid YAML: {exc}") from exc
        return parsed.copy()

    def copy(self) -> Catalog:
        """A copy whose locations can be changed without changing this catalog's."""
        return Catalog(self.models, self.imagesets, self.locations, name=self.name,
                       version=self.version, sources=self.sources, entries=self._entries)

    @classmethod
    def _from_doc(cls, doc: Any, source: str) -> Catalog:
        if not isinstance(doc, Mapping):
            raise CatalogError(f"catalog {source} must be a YAML mapping with keys 'models', "
                               "'imagesets' and/or 'locations'")
        unknown = set(doc) - {"name", "version", "description", "imagesets", "models",
                              "locations"}
        if unknown:
            raise CatalogError(f"catalog {source} has unknown top-level keys {sorted(unknown)}; "
                               "valid keys: name, version, description, imagesets, models, "
                               "locations")
        models = [_model_from_doc(m, source) for m in doc.get("models") or []]
        raw = doc.get("locations") or {}
        if not isinstance(raw, Mapping):
            raise CatalogError(f"catalog {source}: 'locations' must map names to URLs (e.g. "
                               "locations: {lab: {url: /data/nest}}); got a "
                               f"{type(raw).__name__}")
        locations = {n: _location_from_doc(n, loc, source) for n, loc in raw.items()}
        return cls(models, doc.get("imagesets") or {}, locations, name=doc.get("name", "nest"),
                   version=str(doc.get("version", "")), sources=[source])

    def merge(self, other: Catalog | str | os.PathLike[str]) -> Catalog:
        """Return a catalog with another catalog's models, image sets and locations added.

        Models and locations with the same name replace this catalog's ones.

        Parameters
        ----------
        other : Catalog or path
            A catalog, or the path of a YAML file in the same schema as ``catalog/nest.yaml``.

        Examples
        --------
        >>> import nest_data, pathlib, tempfile
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "lab.yaml"
        >>> _ = p.write_text("locations:\\n  lab: {url: /data/lab-nest}\\n")
        >>> sorted(nest_data.catalog().merge(p).locations)
        ['demo', 'lab', 'local']
        """
        if not isinstance(other, Catalog):
            other = Catalog.from_yaml(other)
        models = {m.name: m for m in self.models}
        models.update({m.name: m for m in other.models})
        imagesets = {**self.imagesets, **other.imagesets}
        for m in models.values():
            missing = set(m.imagesets) - set(imagesets)
            if missing:
                raise CatalogError(f"model {m.name} names image sets {sorted(missing)} that no "
                                   f"catalog defines; add them under 'imagesets:'")
        return Catalog(list(models.values()), imagesets, {**self.locations, **other.locations},
                       name=self.name, version=self.version,
                       sources=self.sources + other.sources)

    def add_location(
        self, name: str, url: str, storage_options: Mapping[str, Any] | None = None,
        description: str = "",
    ) -> None:
        """Add (or replace) a named location.

        Parameters
        ----------
        name : str
            Name to use with ``location=``.
        url : str
            A local folder or fsspec URL (``s3://bucket/prefix``, ``gs://...``, ``https://...``).
        storage_options : dict, optional
            fsspec options for that URL (e.g. ``{"anon": True}`` for a public S3 bucket).

        Examples
        --------
        >>> import nest_data
        >>> cat = nest_data.catalog()
        >>> cat.add_location("lab", "/data/nest")
        >>> cat.locations["lab"].url
        '/data/nest'
        """
        self.locations[name] = Location(name, url, dict(storage_options or {}), description)

    # ---------------------------------------------------------------- entries
    def _all_entries(self) -> Iterator[Entry]:
        for m in self.models:
            for imageset in m.imagesets:
                for subject in m.subjects:
                    rois: tuple[str | None, ...] = ((None, *m.rois) if m.surface
                                                     else m.rois or (None,))
                    for roi in rois:
                        yield Entry.of(m, imageset, subject, roi)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, index: int) -> Entry:
        return self._entries[index]

    def __repr__(self) -> str:
        return (f"<nest_data.Catalog {self.name!r} v{self.version}: {len(self)} entries, "
                f"locations {sorted(self.locations)}>")

    def vocabulary(self, key: str) -> list[Any]:
        """Valid values of one key across the whole catalog.

        Examples
        --------
        >>> import nest_data
        >>> nest_data.catalog().vocabulary("imageset")
        ['imagenet_val', 'nsd', 'things']
        """
        if key not in KEYS:
            raise UnknownKeyError(f"unknown catalog key {key!r}; valid keys: {', '.join(KEYS)}")
        values = {getattr(e, key) for e in self._all_entries()} - {None}
        return sorted(values)

    def search(self, **keys: Any) -> Catalog:
        """Entries matching every given key; a key's value may be a scalar or a list.

        Parameters
        ----------
        **keys
            Any of ``modality, train_dataset, model, imageset, subject, roi``.

        Returns
        -------
        Catalog
            A catalog holding only the matching entries.

        Raises
        ------
        UnknownKeyError
            A key or a value that the catalog does not know; the message lists valid values.

        Examples
        --------
        >>> import nest_data
        >>> len(nest_data.catalog().search(modality="eeg", imageset=["nsd", "things"]))
        20
        """
        wanted = {k: set(self._normalise_values(k, v)) for k, v in keys.items() if v is not None}
        entries = [e for e in self._entries
                   if all(getattr(e, k) in vals for k, vals in wanted.items())]
        return Catalog(self.models, self.imagesets, self.locations, name=self.name,
                       version=self.version, sources=self.sources, entries=entries)

    def _normalise_values(self, key: str, value: Any) -> list[Any]:
        values = list(value) if isinstance(value, (list, tuple, set, frozenset)) else [value]
        valid = self.vocabulary(key)
        return [_normalise(key, v, valid, context="") for v in values]

    @property
    def df(self) -> pd.DataFrame:
        """A pandas table with one row per entry (keys, path, dims, sizes)."""
        import pandas as pd

        specs = {(m.modality, m.train_dataset, m.model): m for m in self.models}
        rows = []
        for e in self._entries:
            spec = specs[(e.modality, e.train_dataset, e.model)]
            n_voxels = spec.n_voxels.get(e.subject, {}).get(e.roi or "") if e.roi else None
            rows.append({**e.key, "path": e.path, "dims": ",".join(e.dims),
                         "n_images": self.imagesets.get(e.imageset, {}).get("n_images"),
                         "n_voxels": n_voxels})
        df = pd.DataFrame(rows, columns=[*KEYS, "path", "dims", "n_images", "n_voxels"])
        return df.astype({"n_voxels": "Int64", "n_images": "Int64"})

    # ---------------------------------------------------------------- resolution
    def resolve(self, **keys: Any) -> Entry:
        """The one entry that the keys name, inferring modality, train_dataset and model.

        Raises
        ------
        UnknownKeyError
            A value that does not exist (the message lists the valid values).
        AmbiguousKeyError
            The keys match more than one kind of entry (the message says which key to add).

        Examples
        --------
        >>> import nest_data
        >>> nest_data.catalog().resolve(imageset="things", subject=1, roi="V1").modality
        'fmri'
        """
        model, imageset, subject, roi = self._resolve(keys, need_imageset=True)
        return Entry.of(model, cast(str, imageset), subject, roi)  # need_imageset: a str

    def resolve_weights(self, **keys: Any) -> tuple[ModelSpec, str]:
        """The model and the relative path of one subject's (and ROI's) encoder weights.

        Takes the keys of :meth:`resolve` except ``imageset``.

        Examples
        --------
        >>> import nest_data
        >>> nest_data.catalog().resolve_weights(subject=1, roi="V1")[1]
        'weights/modality-fmri/train_dataset-nsd/model-fwrf/sub-01_roi-V1'
        """
        model, _, subject, roi = self._resolve(keys, need_imageset=False)
        if not model.weights_path:
            raise UnknownKeyError(f"the catalog has no weights for {model.name}; models with "
                                  "weights: " + _fmt(m.name for m in self.models
                                                     if m.weights_path))
        fields = {"modality": model.modality, "train_dataset": model.train_dataset,
                  "model": model.model, "subject": subject, "roi": roi}
        return model, model.weights_path.format(**fields)

    def _resolve(self, keys: Mapping[str, Any], *, need_imageset: bool
                 ) -> tuple[ModelSpec, str | None, int, str | None]:
        unknown = set(keys) - set(KEYS)
        if unknown:
            raise UnknownKeyError(f"unknown catalog key(s) {sorted(unknown)}; valid keys: "
                                  f"{', '.join(KEYS)}")
        given = {k: v for k, v in keys.items() if v is not None}
        for k in ("imageset", "subject") if need_imageset else ("subject",):
            if k not in given:
                raise AmbiguousKeyError(f"{k}= is required; valid values: "
                                        f"{_fmt(self.vocabulary(k))}")
        models = list(self.models)
        for k in MODEL_KEYS:
            if k in given:
                given[k] = _normalise(k, given[k], sorted({getattr(m, k) for m in models}), "")
                models = [m for m in models if getattr(m, k) == given[k]]
        if not models:
            raise UnknownKeyError("no model matches " + ", ".join(
                f"{k}={given[k]!r}" for k in MODEL_KEYS if k in given) + "; valid models: " +
                _fmt([m.name for m in self.models]))
        imageset_models = [m for m in models if "imageset" not in given
                           or _matches(given["imageset"], m.imagesets)]
        if not imageset_models:
            raise UnknownKeyError(
                f"unknown imageset {given['imageset']!r} for " + _fmt(m.name for m in models) +
                "; valid imageset values: " + _fmt(sorted({i for m in models
                                                            for i in m.imagesets})) + ".")
        models = imageset_models
        named = any(k in given for k in ("train_dataset", "model"))
        if "roi" in given:
            models = self._models_for_roi(models, given["roi"], named)
        else:
            models = self._models_without_roi(models, given)
        if len(models) > 1:
            raise AmbiguousKeyError("the keys match several models: " +
                                    _fmt([m.name for m in models]) +
                                    "; pass modality=, train_dataset= or model= to choose one")
        m = models[0]
        context = f" for {m.name}"
        imageset = (_normalise("imageset", given["imageset"], list(m.imagesets), context)
                    if "imageset" in given else None)
        subject = _normalise("subject", given["subject"], list(m.subjects), context)
        roi = (_normalise("roi", given["roi"], list(m.rois), context)
               if m.rois and "roi" in given else None)
        return m, imageset, subject, roi

    @staticmethod
    def _models_for_roi(models: list[ModelSpec], roi: Any, named: bool) -> list[ModelSpec]:
        """The models an ROI can belong to: those that have it, the default one if several."""
        with_roi = [m for m in models if m.rois]
        if not with_roi:
            raise UnknownKeyError(f"roi={roi!r} given, but the selected model has no ROIs (EEG "
                                  "entries have none); drop roi=")
        fitting = [m for m in with_roi if _matches(roi, m.rois)]
        if not fitting:
            context = " for " + _fmt(m.name for m in with_roi)
            _normalise("roi", roi, list(dict.fromkeys(r for m in with_roi for r in m.rois)),
                       context)
        defaults = [m for m in fitting if m.default]
        if len(fitting) > 1 and not named and len(defaults) == 1:
            return defaults
        return fitting or with_roi

    @staticmethod
    def _models_without_roi(models: list[ModelSpec], given: Mapping[str, Any]
                            ) -> list[ModelSpec]:
        """The models whose entries need no ROI (EEG; a surface model's whole surface)."""
        needing = [m for m in models if m.rois and not m.surface]
        optional = [m for m in models if m not in needing]
        if not optional:
            rois = sorted({r for m in models for r in m.rois})
            raise AmbiguousKeyError(f"roi= is required for {_fmt([m.name for m in models])}; "
                                    f"valid ROIs: {_fmt(rois)}")
        surface = [m for m in optional if m.surface]
        if needing and (not any(k in given for k in MODEL_KEYS) or (
                surface and not any(k in given for k in ("train_dataset", "model")))):
            choices = ["roi= for an fMRI entry (valid ROIs: " +
                       _fmt(sorted({r for m in needing for r in m.rois})) + ")"]
            if any(not m.rois for m in optional):
                choices.append("modality='eeg' for an EEG entry")
            if surface:
                choices.append("train_dataset=" + " / ".join(repr(m.train_dataset)
                                                             for m in surface) +
                               " for a whole cortical surface")
            raise AmbiguousKeyError("no roi= given: pass " + ", or ".join(choices))
        return optional

    def model_spec(self, entry: Entry) -> ModelSpec:
        """The :class:`ModelSpec` an entry belongs to."""
        for m in self.models:
            if (m.modality, m.train_dataset, m.model) == (entry.modality, entry.train_dataset,
                                                         entry.model):
                return m
        raise UnknownKeyError(f"no model {entry.modality}/{entry.train_dataset}/{entry.model} "
                              f"in this catalog; valid: {_fmt([m.name for m in self.models])}")

    def location(self, location: str | os.PathLike[str] | None = None,
                 storage_options: Mapping[str, Any] | None = None) -> Root:
        """Resolve a location name, folder or URL to a :class:`Root`.

        Lookup order: the argument (a location name, a folder, or a URL), then the
        ``NEST_DATA_LOCATION`` environment variable, then the ``local`` location when
        ``NEST_DATA_ROOT`` is set.  ``storage_options`` are merged over the location's own.

        Examples
        --------
        >>> import nest_data
        >>> nest_data.catalog().location("/data/nest", {"anon": True})
        Root(url='/data/nest', storage_options={'anon': True}, name='/data/nest')
        """
        check_storage_options(storage_options)
        if location is not None and not isinstance(location, (str, os.PathLike)):
            raise LocationError(f"location={location!r} is not a name, folder or URL; give a "
                                "location name (" + _fmt(sorted(self.locations)) + "), a "
                                "folder or an fsspec URL")
        name = os.fspath(location) if location is not None else None
        if name is None:
            name = os.environ.get(_config.ENV_LOCATION) or None
        if name is None and os.environ.get(_config.ENV_ROOT) and "local" in self.locations:
            name = "local"
        if name is None:
            raise LocationError(
                "no location given: pass location= (one of " + _fmt(sorted(self.locations)) +
                ", a folder, or a URL), or set NEST_DATA_ROOT to the folder that holds your "
                "stores, or NEST_DATA_LOCATION to a location name. To try nest-data without "
                "data, run `nest-data demo` and use location='demo'."
            )
        extra = dict(storage_options or {})
        if name in self.locations:
            loc = self.locations[name]
            return Root(loc.resolve(), {**loc.storage_options, **extra}, name)
        if "/" in name or "\\" in name or name.startswith(".") or os.path.isdir(name):
            return Root(name, extra, name)
        close = difflib.get_close_matches(name, sorted(self.locations), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise LocationError(f"unknown location {name!r}; valid locations: "
                            f"{_fmt(sorted(self.locations))}, or any folder or fsspec URL."
                            f"{hint} Add one with Catalog.add_location() or a catalog YAML "
                            "'locations:' block.")

    # ---------------------------------------------------------------- export
    def to_intake_esm(
        self, directory: str | os.PathLike[str], *, location: str | None = None,
        name: str | None = None,
    ) -> Path:
        """Export the entries as an intake-esm collection (a JSON file and a CSV file).

        Parameters
        ----------
        directory : path
            Folder to write ``<name>.json`` and ``<name>.csv`` into.
        location : str, optional
            Location whose root prefixes the ``path`` column (default lookup as in
            :meth:`location`).
        name : str, optional
            File stem; defaults to the catalog's name.

        Returns
        -------
        pathlib.Path
            The JSON file, to pass to ``intake_esm.esm_datastore``.

        Examples
        --------
        >>> import nest_data, tempfile
        >>> cat = nest_data.catalog().search(imageset="things", subject=1, roi="V1")
        >>> cat.to_intake_esm(tempfile.mkdtemp(), location="demo").suffix
        '.json'
        """
        where = self.location(location)
        root, options = where.url, dict(where.storage_options)
        stem = name or self.name
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        df = self.df.drop(columns=["dims", "n_images", "n_voxels"])
        df["roi"] = df["roi"].fillna("none")
        df["variable"] = "responses"
        if "://" not in root:  # intake-esm always passes storage_options, which zarr
            root = Path(root).absolute().as_uri()  # accepts for URLs only
        df["path"] = [root.rstrip("/") + "/" + p for p in df["path"]]
        df.to_csv(out / f"{stem}.csv", index=False)
        spec = {
            "esmcat_version": "0.1.0",
            "id": stem,
            "description": f"nest-data catalog {self.name} v{self.version}, location {root}",
            "catalog_file": f"{stem}.csv",
            "attributes": [{"column_name": k, "vocabulary": ""} for k in KEYS],
            "assets": {"column_name": "path", "format": "zarr"},
            "aggregation_control": {
                "variable_column_name": "variable",
                "groupby_attrs": list(KEYS),
                "aggregations": [],
            },
        }
        if options:
            spec["storage_options"] = options
        path = out / f"{stem}.json"
        path.write_text(json.dumps(spec, indent=2))
        return path


@functools.lru_cache(maxsize=32)
def _parse_yaml(source: str, path: str, mtime_ns: int) -> Catalog:
    """Read a catalog file once per modification time (``open`` asks for the catalog)."""
    return Catalog._from_doc(yaml.safe_load(Path(path).read_text()), source)


def _fmt(values: Iterable[Any]) -> str:
    return ", ".join(str(v) for v in values)


def _matches(value: Any, valid: Sequence[Any]) -> bool:
    return str(value).lower() in {str(v).lower() for v in valid}


def _normalise(key: str, value: Any, valid: Sequence[Any], context: str) -> Any:
    """Map a user's spelling of a key value to the canonical one, or raise UnknownKeyError."""
    if key == "subject":
        text = str(value).strip().lower().removeprefix("sub-").removeprefix("subject-")
        if text.isdigit() and int(text) in valid:
            return int(text)
    elif value in valid:
        return value
    else:
        folded = {str(v).lower(): v for v in valid}
        if str(value).lower() in folded:
            return folded[str(value).lower()]
    hint = [] if key == "subject" else difflib.get_close_matches(str(value),
                                                                  [str(v) for v in valid], n=1)
    suggestion = f" Did you mean {hint[0]!r}?" if hint else ""
    raise UnknownKeyError(f"unknown {key} {value!r}{context}; valid {key} values: "
                          f"{_fmt(valid)}.{suggestion}")


def _check_template(template: str, what: str, model: str, source: str) -> None:
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


def _model_from_doc(doc: Any, source: str) -> ModelSpec:
    required = {"modality", "train_dataset", "model", "subjects", "imagesets", "path", "dims"}
    if not isinstance(doc, Mapping) or required - set(doc):
        missing = sorted(required - set(doc)) if isinstance(doc, Mapping) else sorted(required)
        raise CatalogError(f"catalog {source}: every item of 'models' needs keys "
                           f"{sorted(required)}; missing {missing}")
    for what in ("path", "weights_path", "backbone_path"):
        _check_template(str(doc.get(what) or ""), what, str(doc.get("model")), source)
    names = [doc["modality"], doc["train_dataset"], doc["model"], *(doc.get("rois") or ()),
             *doc["imagesets"]]
    bad = [str(n) for n in names if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", str(n))
           or ".." in str(n)]
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


def _location_from_doc(name: str, doc: Any, source: str) -> Location:
    if isinstance(doc, str):
        doc = {"url": doc}
    if not isinstance(doc, Mapping) or "url" not in doc:
        raise CatalogError(f"catalog {source}: location {name!r} needs a 'url' (a folder or "
                           "fsspec URL) and optionally 'storage_options'")
    return Location(name, str(doc["url"]), dict(doc.get("storage_options") or {}),
                    str(doc.get("description", "")).strip())


def catalog(*extra: str | os.PathLike[str]) -> Catalog:
    """The NEST catalog shipped with nest-data, merged with any extra YAML files.

    Parameters
    ----------
    *extra : path
        User catalog files (same schema as ``catalog/nest.yaml``) adding models, image sets
        or locations.  Files listed in the ``NEST_DATA_CATALOGS`` environment variable
        (separated by ``os.pathsep``) are merged too.

    Returns
    -------
    Catalog

    Examples
    --------
    >>> import nest_data
    >>> cat = nest_data.catalog()
    >>> cat.vocabulary("modality")
    ['eeg', 'fmri']
    """
    cat = Catalog.from_yaml(catalog_path())
    env = [p for p in os.environ.get("NEST_DATA_CATALOGS", "").split(os.pathsep) if p]
    for path in [*env, *extra]:
        cat = cat.merge(path)
    return cat

