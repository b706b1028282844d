"""The catalog: which entries exist and where their stores live; search and export."""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import yaml

from nest_data._catalog import export
from nest_data._catalog.keys import (
    fmt,
    matches,
    normalise,
    resolve_location,
    resolve_model,
)
from nest_data._catalog.schema import (
    KEYS,
    Entry,
    Location,
    ModelSpec,
    Root,
    is_valid_name,
    location_from_doc,
    model_from_doc,
)
from nest_data._format import DATA_VAR
from nest_data._index import INDEX_FILE, Index, existing_paths, read_index, read_object
from nest_data._redact import redact_url
from nest_data._urls import check_storage_options, is_local, validate_storage_options
from nest_data.catalogs import catalog_path
from nest_data.errors import (
    CatalogError,
    InputError,
    LocationError,
    NestDataError,
    UnknownKeyError,
)

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
        #: Whether the entries are every entry of the models (not a search's subset).
        self._whole = entries is None
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
        copied = Catalog(self.models, self.imagesets, self.locations, name=self.name,
                         version=self.version, sources=self.sources, entries=self._entries)
        copied._whole = self._whole
        return copied

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
        base, index, root = self, None, None
        if location is not None:
            root = self.location(location, storage_options)
            index = _read_index(root)
            base = self._with_index(root, index)
        elif storage_options is not None:
            raise InputError("storage_options= applies to the location= of search; give "
                             "location= too, or drop storage_options=")
        wanted = {k: set(base._normalise_values(k, v)) for k, v in keys.items() if v is not None}
        entries = [e for e in base._entries
                   if all(getattr(e, k) in vals for k, vals in wanted.items())]
        if root is not None:
            entries = ([e for e in entries if e.path in index.stores] if index is not None
                       else self._present(entries, root))
        return Catalog(base.models, base.imagesets, base.locations, name=base.name,
                       version=base.version, sources=base.sources, entries=entries)

    def at(self, location: str | os.PathLike[str] | Root | None = None,
           storage_options: Mapping[str, Any] | None = None) -> Catalog:
        """This catalog as a location sees it: with the image sets its stores add.

        A location's index (``nest-data-index.json``, kept by every writer) names each
        store's keys.  Image sets that a model's stores there have and the catalog files do
        not (written by :func:`nest_data.generate` or ``nest-data generate``, e.g.
        ``"my_stimuli"``) become valid image sets of that model, so their stores open by
        key at that location without a catalog file; an image set's ``n_images`` is read
        from one of its stores.  Reads the index (one request); a location without one
        adds nothing (build it with ``nest-data index ROOT``).

        Parameters
        ----------
        location : str, path or Root, optional
            A location name, folder or URL (default lookup as in :meth:`location`).
        storage_options : dict, optional
            fsspec options, merged over the location's own.

        Returns
        -------
        Catalog
            This catalog when the location adds nothing; else a catalog whose models also
            list the location's own image sets, and which (unless this catalog is a
            search's result) also holds their entries that the location has.

        Examples
        --------
        >>> import nest_data
        >>> cat = nest_data.catalog()
        >>> cat.at("demo") is cat   # the demo's image sets are the catalog's own
        True
        """
        root = location if isinstance(location, Root) else self.location(location,
                                                                          storage_options)
        return self._with_index(root, _read_index(root))

    def resolve_at(self, location: str | os.PathLike[str] | Root | None = None,
                   storage_options: Mapping[str, Any] | None = None, **keys: Any
                   ) -> tuple[Entry, Root]:
        """The entry that the keys name at a location, and the location's :class:`Root`.

        As :meth:`resolve`, but an image set that the catalog files do not name is looked
        up in the location's index (see :meth:`at`): stores written there by
        :func:`nest_data.generate` open by their keys.  Image sets the catalog names are
        resolved without reading anything.  An image set unknown to both is refused with
        the catalog's message (valid values, "did you mean").

        Raises
        ------
        UnknownKeyError, AmbiguousKeyError
            As :meth:`resolve`; an unknown image set's message lists the location's own.
        LocationError
            As :meth:`location`.

        Examples
        --------
        >>> import nest_data
        >>> entry, root = nest_data.catalog().resolve_at("demo", imageset="things",
        ...                                              subject=1, roi="V1")
        >>> entry.label, root.name
        ('fmri/nsd/fwrf things sub-01 V1', 'demo')
        """
        try:
            entry = self.resolve(**keys)
        except UnknownKeyError as exc:
            imageset = keys.get("imageset")
            if imageset is None or matches(imageset, self.vocabulary("imageset")):
                raise
            root = self._root(location, storage_options, exc)
            here = self.at(root)
            if here is self:  # the location adds no image set
                raise
            return here.resolve(**keys), root
        return entry, self._root(location, storage_options, None)

    def _root(self, location: str | os.PathLike[str] | Root | None,
              storage_options: Mapping[str, Any] | None, error: Exception | None) -> Root:
        """``location`` as a Root; with ``error`` given, a location that cannot be resolved
        raises ``error`` (the key problem the caller found first) instead."""
        if isinstance(location, Root):
            return location
        if error is None:
            return self.location(location, storage_options)
        try:
            return self.location(location, storage_options)
        except LocationError:
            raise error from None

    def _with_index(self, root: Root, index: Index | None) -> Catalog:
        """This catalog plus the image sets that the stores listed in ``index`` add."""
        specs = {(m.modality, m.train_dataset, m.model): m for m in self.models}
        added: dict[str, dict[str, str]] = {}  # model name -> image set -> a store's path
        records = []
        for path, record in sorted((index.stores if index is not None else {}).items()):
            k = record.keys
            spec = specs.get((str(k.get("modality")), str(k.get("train_dataset")),
                              str(k.get("model"))))
            imageset = k.get("imageset")
            if spec is None or imageset in spec.imagesets or not is_valid_name(imageset):
                continue
            added.setdefault(spec.name, {}).setdefault(str(imageset), path)
            records.append((spec, record.keys))
        if not added:
            return self
        models = [replace(m, imagesets=(*m.imagesets, *added[m.name])) if m.name in added
                  else m for m in self.models]
        imagesets = dict(self.imagesets)
        for found in added.values():
            for name, path in found.items():
                imagesets.setdefault(name, {
                    "n_images": _n_images(root, path),
                    "description": f"written by nest-data at {redact_url(root.url)} (its "
                                   f"{INDEX_FILE} lists it)"})
        entries = list(self._entries)
        if self._whole:
            for spec, keys in records:
                entries += _entries_of_store(spec, keys)
        return Catalog(models, imagesets, self.locations, name=self.name,
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
        """A pandas table with one row per entry (keys, path, dims, sizes).

        Columns: the keys (``modality, train_dataset, model, imageset, subject, roi``), the
        store's ``path`` under a location's root, its ``dims``, and:

        ``n_images``
            Images of the entry's image set (from the catalog file, or for an image set a
            location adds, read from one of its stores: see :meth:`at`).
        ``n_voxels``
            Voxels of an fwRF entry where the publishers give them: subject 1's 23 ROIs
            (BERG's fwRF model card).  **Unknown** (``<NA>``) for subjects 2-8, whose
            counts differ and are published nowhere (NEST's and BERG's model cards and
            code give subject 1's only), and for EEG and surface entries; an opened
            entry's ``sizes["voxel"]`` (``nest_data.open``) is the count.

        Examples
        --------
        >>> import nest_data
        >>> df = nest_data.catalog().search(model="fwrf", roi="V1", imageset="nsd").df
        >>> df.subject.head(3).tolist(), df.n_voxels.head(3).tolist()
        ([1, 2, 3], [1350, <NA>, <NA>])
        """
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
        here = self.at(root)
        present = here._present(here._entries, root)
        return export.write_intake_esm(
            export.listing(here.models, here.imagesets, present), root, directory,
            name or self.name, f"nest-data catalog {self.name} v{self.version}")


def _read_index(root: Root) -> Index | None:
    """The index at ``root`` (None when it has none), its storage options checked first."""
    if not is_local(root.url):
        validate_storage_options(root.url, dict(root.storage_options))
    return read_index(root.url, root.storage_options)


def _entries_of_store(spec: ModelSpec, keys: Mapping[str, Any]) -> list[Entry]:
    """The catalog entries one store holds: itself, and a surface store's ROIs."""
    try:
        subject = int(keys["subject"])
    except (KeyError, TypeError, ValueError):
        return []
    imageset, roi = str(keys["imageset"]), keys.get("roi")
    if spec.surface:
        return [Entry.of(spec, imageset, subject, r) for r in (None, *spec.rois)]
    if spec.rois and roi not in spec.rois:
        return []
    return [Entry.of(spec, imageset, subject, roi if spec.rois else None)]


def _n_images(root: Root, path: str) -> int | None:
    """The number of images of the store at ``path`` (its root ``zarr.json``), or None."""
    try:
        raw = read_object(root.url, dict(root.storage_options), f"{path}/zarr.json")
        shape = json.loads(raw or b"{}")["consolidated_metadata"]["metadata"][DATA_VAR]["shape"]
        return int(shape[0])
    except (KeyError, TypeError, ValueError, IndexError, NestDataError) as exc:
        logger.info("cannot read the number of images of %s: %s", path, exc)
        return None


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

