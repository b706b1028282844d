"""nest-data: the NEST in silico neural responses as labelled, lazy, cloud-ready arrays.

Examples
--------
>>> import nest_data
>>> da = nest_data.open(imageset="things", subject=1, roi="V1", location="demo")
>>> da.dims
('image', 'voxel')
"""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version

from nest_data._analysis import roi_mean, top_images
from nest_data._cache import ChunkCache
from nest_data._catalog import Catalog, Entry, Location, catalog
from nest_data._demo import build_demo, plot_roi_summary, run_demo
from nest_data._encode import encode
from nest_data._mirror import mirror
from nest_data._open import open, open_many, open_metadata
from nest_data._verify import verify
from nest_data.errors import (
    AmbiguousKeyError,
    CatalogError,
    ChecksumError,
    ConversionError,
    LocationError,
    NestDataError,
    RemoteReadError,
    SourceFormatError,
    StoreNotFoundError,
    UnknownKeyError,
)

try:
    __version__ = version("nest-data")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

logging.getLogger("nest_data").addHandler(logging.NullHandler())

__all__ = [
    "AmbiguousKeyError",
    "Catalog",
    "CatalogError",
    "ChecksumError",
    "ChunkCache",
    "ConversionError",
    "Entry",
    "Location",
    "LocationError",
    "NestDataError",
    "RemoteReadError",
    "SourceFormatError",
    "StoreNotFoundError",
    "UnknownKeyError",
    "__version__",
    "build_demo",
    "catalog",
    "encode",
    "mirror",
    "open",
    "open_many",
    "open_metadata",
    "plot_roi_summary",
    "roi_mean",
    "run_demo",
    "top_images",
    "verify",
]
