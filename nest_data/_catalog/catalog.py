"""The catalog: which entries exist and where their stores live; search and export."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import yaml

from nest_data._catalog import export
from nest_data._catalog.keys import fmt, normalise, resolve_location, resolve_model
from nest_data._catalog.schema import (
    KEYS,
    Entry,
    Location,
    ModelSpec,
    Root,
    location_from_doc,
    model_from_doc,
)
from nest_data._index import existing_paths
from nest_data._urls import check_storage_options
from nest_data.catalogs import catalog_path
from nest_data.errors import CatalogError, InputError, UnknownKeyError

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger("nest_data")


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
        models = [model_from_doc(m, source) for m in doc.get("models") or []]
        raw = doc.get("locations") or {}
        if not isinstance(raw, Mapping):
            raise CatalogError(f"catalog {source}: 'locations' must map names to URLs (e.g. "
                               "locations: {lab: {url: /data/nest}}); got a "
                               f"{type(raw).__name__}")
        locations = {n: location_from_doc(n, loc, source) for n, loc in raw.items()}
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

    def search(self, *, location: str | os.PathLike[str] | None = None,
               storage_options: Mapping[str, Any] | None = None, **keys: Any) -> Catalog:
        """Entries matching every given key; a key's value may be a scalar or a list.

        Parameters
        ----------
        location : str or path, optional
            Keep only the entries whose store exists at this location (a name, folder or
            URL).  Its index answers in one request; a root without one is listed (or, over
            HTTP, each matching entry's store is probed).
        storage_options : dict, optional
            fsspec options for ``location``, merged over the location's own.
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
        >>> len(nest_data.catalog().search(roi="FFA-1", location="demo"))  # 24 fwRF, 1 surface
        25
        """
        wanted = {k: set(self._normalise_values(k, v)) for k, v in keys.items() if v is not None}
        entries = [e for e in self._entries
                   if all(getattr(e, k) in vals for k, vals in wanted.items())]
        if location is not None:
            entries = self._present(entries, self.location(location, storage_options))
        elif storage_options is not None:
            raise InputError("storage_options= applies to the location= of search; give "
                             "location= too, or drop storage_options=")
        return Catalog(self.models, self.imagesets, self.locations, name=self.name,
                       version=self.version, sources=self.sources, entries=entries)

    @staticmethod
    def _present(entries: Sequence[Entry], root: Root) -> list[Entry]:
        """The entries whose store exists at ``root``."""
        present = existing_paths(root.url, root.storage_options,
                                 candidates=[e.path for e in entries])
        return [e for e in entries if e.path in present]

    def _normalise_values(self, key: str, value: Any) -> list[Any]:
        values = list(value) if isinstance(value, (list, tuple, set, frozenset)) else [value]
        valid = self.vocabulary(key)
        return [normalise(key, v, valid, context="") for v in values]

    @property
    def df(self) -> pd.DataFrame:
        """A pandas table with one row per entry (keys, path, dims, sizes)."""
        return export.listing(self.models, self.imagesets, self._entries)

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
        model, imageset, subject, roi = resolve_model(self.models, keys, need_imageset=True)
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
        model, _, subject, roi = resolve_model(self.models, keys, need_imageset=False)
        if not model.weights_path:
            raise UnknownKeyError(f"the catalog has no weights for {model.name}; models with "
                                  "weights: " + fmt(m.name for m in self.models
                                                     if m.weights_path))
        fields = {"modality": model.modality, "train_dataset": model.train_dataset,
                  "model": model.model, "subject": subject, "roi": roi}
        return model, model.weights_path.format(**fields)

    def model_spec(self, entry: Entry) -> ModelSpec:
        """The :class:`ModelSpec` an entry belongs to."""
        for m in self.models:
            if (m.modality, m.train_dataset, m.model) == (entry.modality, entry.train_dataset,
                                                         entry.model):
                return m
        raise UnknownKeyError(f"no model {entry.modality}/{entry.train_dataset}/{entry.model} "
                              f"in this catalog; valid: {fmt([m.name for m in self.models])}")

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
        return resolve_location(self.locations, location, storage_options)

    # ---------------------------------------------------------------- export
    def to_intake_esm(
        self, directory: str | os.PathLike[str], *, location: str | None = None,
        name: str | None = None, storage_options: Mapping[str, Any] | None = None,
    ) -> Path:
        """Export the entries whose stores exist at a location as an intake-esm collection
        (a JSON file and a CSV file).

        Parameters
        ----------
        directory : path
            Folder to write ``<name>.json`` and ``<name>.csv`` into.
        location : str, optional
            Location whose root prefixes the ``path`` column (default lookup as in
            :meth:`location`); only the entries whose store exists there are listed.
        name : str, optional
            File stem; defaults to the catalog's name.
        storage_options : dict, optional
            fsspec options for ``location``, merged over the location's own.  Those that
            hold credentials (:func:`nest_data._redact.redact` decides) are not written:
            the JSON names them under ``storage_options_to_supply`` and its description
            says to pass them to ``to_dataset_dict(storage_options=...)``.

        Returns
        -------
        pathlib.Path
            The JSON file, to pass to ``intake_esm.esm_datastore``.

        Raises
        ------
        LocationError
            The location's URL carries a credential (``user:password@``, a signature),
            which the CSV's paths would hold.

        Examples
        --------
        >>> import nest_data, tempfile
        >>> cat = nest_data.catalog().search(imageset="things", subject=1, roi="V1")
        >>> cat.to_intake_esm(tempfile.mkdtemp(), location="demo").suffix
        '.json'
        """
        root = self.location(location, storage_options)
        present = self._present(self._entries, root)
        return export.write_intake_esm(
            export.listing(self.models, self.imagesets, present), root, directory,
            name or self.name, f"nest-data catalog {self.name} v{self.version}")


@functools.lru_cache(maxsize=32)
def _parse_yaml(source: str, path: str, mtime_ns: int) -> Catalog:
    """Read a catalog file once per modification time (``open`` asks for the catalog)."""
    return Catalog._from_doc(yaml.safe_load(Path(path).read_text()), source)


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

