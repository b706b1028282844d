"""nest-data: the NEST in silico neural responses as labelled, lazy, cloud-ready arrays.

Examples
--------
>>> import nest_data
>>> da = nest_data.open(imageset="things", subject=1, roi="V1", location="demo")
>>> da.dims
('image', 'voxel')
"""

from __future__ import annotations

import importlib
import logging
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from nest_data._cache import ChunkCache
from nest_data._catalog import Catalog, Entry, Location, Root, catalog
from nest_data._config import set_options
from nest_data._demo import build_demo, plot_roi_summary, plot_surface_map, run_demo
from nest_data._encode import Encoder, encode, encoder
from nest_data._generate import generate
from nest_data._mirror import mirror
from nest_data._open import open, open_collection, open_many, open_metadata, open_store
from nest_data._plot import plot_saliency
from nest_data._verify import build_index, verify
from nest_data.analysis import (
    multivariate_rnc,
    roi_mean,
    roi_means,
    rsa,
    rsa_matrix,
    rsm,
    select_images,
    surface_space,
    top_images,
    univariate_rnc,
)
from nest_data.errors import (
    AmbiguousKeyError,
    CatalogError,
    ChecksumError,
    ConversionError,
    EncoderFreedError,
    IndexFormatError,
    IndexLockError,
    IndexVersionError,
    InputError,
    LocationError,
    MissingObjectError,
    NestDataError,
    NonFiniteError,
    NoSpaceError,
    RemoteReadError,
    SourceFormatError,
    StoreFormatError,
    StoreNotFoundError,
    StoreVersionError,
    TargetExistsError,
    UnknownKeyError,
    WriterLockError,
)
from nest_data.gradients import dream, objectives, saliency

try:
    __version__ = version("nest-data")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

logging.getLogger("nest_data").addHandler(logging.NullHandler())

#: Subpackages reachable as attributes of ``nest_data``, imported on first use.
_LAZY_SUBPACKAGES = ("synthetic",)


def __getattr__(name: str) -> Any:
    """``nest_data.synthetic`` without ``import nest_data.synthetic``, imported on first use.

    Examples
    --------
    >>> import nest_data
    >>> nest_data.synthetic.test_images(2, 32).shape
    (2, 32, 32, 3)
    """
    if name in _LAZY_SUBPACKAGES:
        return importlib.import_module(f"nest_data.{name}")
    raise AttributeError(f"module 'nest_data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY_SUBPACKAGES})

__all__ = [
    "AmbiguousKeyError",
    "Catalog",
    "CatalogError",
    "ChecksumError",
    "ChunkCache",
    "ConversionError",
    "Encoder",
    "EncoderFreedError",
    "Entry",
    "IndexFormatError",
    "IndexLockError",
    "IndexVersionError",
    "InputError",
    "Location",
    "LocationError",
    "MissingObjectError",
    "NestDataError",
    "NoSpaceError",
    "NonFiniteError",
    "RemoteReadError",
    "Root",
    "SourceFormatError",
    "StoreFormatError",
    "StoreNotFoundError",
    "StoreVersionError",
    "TargetExistsError",
    "UnknownKeyError",
    "WriterLockError",
    "__version__",
    "build_demo",
    "build_index",
    "catalog",
    "dream",
    "encode",
    "encoder",
    "generate",
    "mirror",
    "multivariate_rnc",
    "objectives",
    "open",
    "open_collection",
    "open_many",
    "open_metadata",
    "open_store",
    "plot_roi_summary",
    "plot_saliency",
    "plot_surface_map",
    "roi_mean",
    "roi_means",
    "rsa",
    "rsa_matrix",
    "rsm",
    "run_demo",
    "saliency",
    "select_images",
    "set_options",
    "surface_space",
    "top_images",
    "univariate_rnc",
    "verify",
]
