"""Coarser fsaverage meshes of an fsaverage entry: fsaverage5 as a selection of vertices.

FreeSurfer's fsaverage meshes are icosahedral subdivisions numbered level by level: the 12
vertices of the icosahedron first, then the midpoints that subdivision order 1 adds, and so
on.  So the mesh of order ``k`` (``fsaverage<k>``, ``10 * 4**k + 2`` vertices per
hemisphere) is the first ``10 * 4**k + 2`` vertices of every finer one, and fsaverage5 (the
mesh neuralbench projects fMRI onto) is fsaverage's first 10,242 vertices per hemisphere.
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
import xarray as xr

from nest_data._surface import HEMISPHERES, N_FSAVERAGE_VERTICES
from nest_data.errors import InputError

__all__ = ["SURFACE_SPACES", "surface_space"]

#: Vertices per hemisphere of each fsaverage mesh (icosahedron of order 3 to 7).
SURFACE_SPACES = {f"fsaverage{order}": 10 * 4**order + 2 for order in range(3, 7)}
SURFACE_SPACES["fsaverage"] = N_FSAVERAGE_VERTICES

Surface = TypeVar("Surface", xr.DataArray, xr.Dataset)


def surface_space(data: Surface, space: str = "fsaverage5") -> Surface:
    """The values of an fsaverage entry on a coarser fsaverage mesh (default fsaverage5).

    A coarser mesh's vertices are the first ones of fsaverage's in each hemisphere (the
    icosahedral mesh numbers coarser vertices first), so this is a selection of vertices:
    nothing is interpolated and no response is read (the result is as lazy as ``data``;
    only the ``hemisphere`` and ``fsaverage_index`` labels are read if an entry opened with
    ``load_labels=False`` left them lazy).  The
    vertices come in the order of the coarser mesh's own files (left hemisphere first, by
    index), so ``values.sel(hemisphere=...)`` lines up with nilearn's
    ``load_fsaverage("fsaverage5")`` mesh; ``vertex``, ``hemisphere`` and
    ``fsaverage_index`` keep labelling every value (``fsaverage_index`` is the index on both
    meshes).  An ROI entry keeps the ROI's vertices that the coarser mesh has.

    The vertices of fsaverage5 are spread over every vertex chunk of a store (stores keep
    vertices in ROI order), so computing the result reads every chunk of the images asked
    and keeps one value in 16.

    Parameters
    ----------
    data : xarray.DataArray or xarray.Dataset
        An fsaverage entry (``train_dataset="nsd_fsaverage"``) from :func:`nest_data.open`,
        :func:`nest_data.encode` or ``nest-data generate``, whole surface or ROI: a
        ``vertex`` dimension labelled by ``hemisphere`` and ``fsaverage_index``.
    space : str
        ``"fsaverage5"`` (10,242 vertices per hemisphere), ``"fsaverage3"``,
        ``"fsaverage4"``, ``"fsaverage6"``, or ``"fsaverage"`` (all vertices, in the same
        order).

    Returns
    -------
    xarray.DataArray or xarray.Dataset
        ``data`` on the coarser mesh; ``attrs["mesh"]`` names it, ``attrs["space"]`` says
        how its vertices are labelled, ``attrs["n_vertices"]`` counts the mesh's vertices
        per hemisphere.

    Raises
    ------
    InputError
        ``data`` is not an fsaverage entry, ``space`` is unknown, ``data`` lies on a
        mesh coarser than ``space``, or none of its vertices lies on ``space``.

    Examples
    --------
    >>> import nest_data
    >>> whole = nest_data.open(imageset="things", subject=1, train_dataset="nsd_fsaverage",
    ...                        location="demo")
    >>> from nest_data.analysis import surface_space
    >>> fs5 = surface_space(whole, "fsaverage5")
    >>> fs5.sizes["vertex"], fs5.attrs["mesh"], int(fs5.fsaverage_index.max())
    (20484, 'fsaverage5', 10241)
    """
    n_mesh = _mesh_size(space)
    hemisphere, index = _surface_labels(data)
    n_source = _source_mesh_size(data, index)
    if n_source < n_mesh:
        raise InputError(f"the entry lies on a mesh of {n_source:,} vertices per hemisphere, "
                         f"coarser than {space} ({n_mesh:,}); choose a space of at most "
                         f"{n_source:,} vertices per hemisphere: "
                         f"{_spaces_up_to(n_source)}")
    order = np.lexsort((index, hemisphere != HEMISPHERES[0]))
    positions = order[index[order] < n_mesh]
    if not positions.size:
        raise InputError(f"none of the entry's {index.size:,} vertices lies on {space} (its "
                         f"fsaverage_index values are {n_mesh:,} or more); select {space} on "
                         "the whole surface (open without roi=), or take a finer space")
    out = data.isel(vertex=positions)
    out.attrs.update({
        "mesh": space,
        "space": f"{space} surface ({n_mesh:,} vertices per hemisphere: the first "
                 f"{n_mesh:,} of fsaverage's); vertex = fsaverage's global index, "
                 "fsaverage_index = index on both meshes, left hemisphere first",
        "n_vertices": {hemi: n_mesh for hemi in HEMISPHERES}})
    return out


def _mesh_size(space: Any) -> int:
    """Vertices per hemisphere of a named fsaverage mesh."""
    if not isinstance(space, str) or space not in SURFACE_SPACES:
        raise InputError(f"space={space!r} is not an fsaverage mesh nest-data selects; valid "
                         f"are {', '.join(map(repr, SURFACE_SPACES))} (e.g. "
                         "space='fsaverage5', the mesh neuralbench uses)")
    return SURFACE_SPACES[space]


def _surface_labels(data: xr.DataArray | xr.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """``hemisphere`` and ``fsaverage_index`` of every vertex, or an error naming the fix."""
    if not isinstance(data, (xr.DataArray, xr.Dataset)):
        raise InputError(f"surface_space takes an xarray DataArray or Dataset of an fsaverage "
                         f"entry; got {type(data).__name__}. Open one with "
                         "nest_data.open(..., train_dataset='nsd_fsaverage')")
    missing = [name for name in ("hemisphere", "fsaverage_index")
               if name not in data.coords or data.coords[name].dims != ("vertex",)]
    if "vertex" not in data.dims or missing:
        raise InputError(f"surface_space needs an fsaverage entry: a 'vertex' dimension "
                         f"labelled by 'hemisphere' and 'fsaverage_index'; got dims "
                         f"{tuple(data.dims)} and coordinates {sorted(map(str, data.coords))}."
                         " Open one with nest_data.open(..., train_dataset='nsd_fsaverage') "
                         "(volume entries have voxels, not vertices)")
    hemisphere = np.asarray(data.coords["hemisphere"].values).astype(str)
    index = np.asarray(data.coords["fsaverage_index"].values)
    unknown = sorted(set(hemisphere) - set(HEMISPHERES))
    if unknown or not np.issubdtype(index.dtype, np.integer) or (index.size and index.min() < 0):
        raise InputError(f"the entry's vertex labels are not fsaverage's: hemisphere must be "
                         f"'lh' or 'rh' (got also {unknown}) and fsaverage_index integers "
                         f">= 0 (got dtype {index.dtype}); give an entry as nest_data.open "
                         "returns it")
    return hemisphere, index.astype(np.int64)


def _source_mesh_size(data: xr.DataArray | xr.Dataset, index: np.ndarray) -> int:
    """Vertices per hemisphere of the mesh ``data`` lies on (attrs, else fsaverage's)."""
    counts = data.attrs.get("n_vertices")
    if isinstance(counts, dict) and counts:
        return min(int(n) for n in counts.values())
    # entries label vertices on fsaverage unless their attrs say otherwise
    return max(N_FSAVERAGE_VERTICES, int(index.max()) + 1 if index.size else 0)


def _spaces_up_to(n_vertices: int) -> str:
    """The spaces with at most ``n_vertices`` vertices per hemisphere, quoted."""
    return ", ".join(repr(name) for name, n in SURFACE_SPACES.items() if n <= n_vertices
                     ) or "none"
