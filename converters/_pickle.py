"""Reading NED's pickled ``.npy`` metadata without executing arbitrary code.

NED stores metadata as ``np.save`` of a dict (an object array, so a pickle).  Instead of
``np.load(..., allow_pickle=True)``, which runs whatever the pickle says, the loader below
unpickles with an allow-list of the few numpy constructors such files need; anything else
is refused with :class:`~nest_data.errors.SourceFormatError`.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from nest_data.errors import SourceFormatError

_ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("collections", "OrderedDict"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def load_npy_dict(path: str | Path) -> dict[str, Any]:
    """Load a NED metadata ``.npy`` (a pickled dict) with a numpy-only allow-list.

    Parameters
    ----------
    path : path
        The ``.npy`` file.

    Returns
    -------
    dict
        The metadata dict.

    Raises
    ------
    SourceFormatError
        The file is missing, not an ``.npy`` file, truncated, not a dict, or its pickle
        refers to anything but numpy arrays.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            _, _, dtype = read_header(f)
            if not dtype.hasobject:
                raise SourceFormatError(f"{path}: expected a pickled metadata dict, found a "
                                        f"plain {dtype} array")
            obj = _NumpyOnlyUnpickler(f).load()
    except FileNotFoundError as exc:
        raise SourceFormatError(f"{path}: metadata file is missing; NED keeps it next to the "
                                ".h5 file (synthetic_neural_responses_metadata_...npy)") from exc
    except SourceFormatError:
        raise
    except Exception as exc:
        raise SourceFormatError(f"{path}: cannot read NED metadata ({type(exc).__name__}: "
                                f"{exc}); re-download the file") from exc
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
        obj = obj.item()
    if not isinstance(obj, dict):
        raise SourceFormatError(f"{path}: expected a pickled dict, found {type(obj).__name__}")
    return obj
