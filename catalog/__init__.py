"""The catalog files shipped with nest-data (``nest_data.catalogs``).

The YAML files in this folder describe the NEST collection; they are read by
:func:`nest_data.catalog`.
"""

from importlib import resources
from pathlib import Path

__all__ = ["DEFAULT_CATALOG", "catalog_path"]

DEFAULT_CATALOG = "nest.yaml"


def catalog_path(name: str = DEFAULT_CATALOG) -> Path:
    """Return the path of a catalog file shipped with the package.

    Parameters
    ----------
    name : str
        File name inside the catalog folder.

    Returns
    -------
    pathlib.Path
        Path to the file.

    Examples
    --------
    >>> from nest_data.catalogs import catalog_path
    >>> catalog_path().name
    'nest.yaml'
    """
    return Path(str(resources.files(__name__).joinpath(name)))
