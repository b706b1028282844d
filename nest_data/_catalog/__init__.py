"""The catalog: its schema (``schema``), key resolution (``keys``), the ``Catalog`` itself
(``catalog``) and its tables (``export``)."""

from nest_data._catalog.catalog import Catalog, catalog
from nest_data._catalog.schema import KEYS, MODEL_KEYS, Entry, Location, ModelSpec, Root

__all__ = ["KEYS", "MODEL_KEYS", "Catalog", "Entry", "Location", "ModelSpec", "Root", "catalog"]
