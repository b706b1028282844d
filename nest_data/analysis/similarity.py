"""Representational similarity: RSMs of image subsets on the fly, and RSA between them."""

from __future__ import annotations

import logging
import warnings
from typing import Any, Literal

import dask
import dask.array
import numpy as np
import xarray as xr
from dask.array.core import PerformanceWarning

from nest_data.analysis.means import (
    Entries,
    _as_dask,
    _entry_list,
    _reliable,
    _shared_image_coords,
    _space,
    counted,
)
from nest_data.analysis.selection import image_positions, select_images
from nest_data.errors import InputError

logger = logging.getLogger("nest_data")

__all__ = ["rsa", "rsa_matrix", "rsm"]

_RSM_BLOCK_BYTES = 64 * 2**20  # rows of the scaled subset per dask chunk (float64)
_LARGE_RSM_IMAGES = 20000  # above this many images an RSM is more than 3 GB


def _features(da: xr.DataArray, min_ncsnr: float | None) -> xr.DataArray:
    """``da`` with every non-image dim flattened into one trailing feature dim."""
    if "image" not in da.dims:
        raise InputError(f"rsm needs an entry with an 'image' dimension; got dims "
                         f"{da.dims}")
    space = _space(da)
    if space is not None:
        kept = _reliable(da, min_ncsnr)
        return kept if kept.dims == ("image", space) else kept.transpose("image", space)
    if min_ncsnr is not None:
        raise InputError("min_ncsnr= selects fMRI voxels; this entry has dims "
                         f"{da.dims}. Pass min_ncsnr=None.")
    other = [d for d in da.dims if d != "image"]
    return da.transpose("image", *other).stack(feature=other)


def rsm(
    da: xr.DataArray, images: Any = None, *, min_ncsnr: float | None = None
) -> xr.DataArray:
    """Representational similarity matrix of an image subset, computed from the responses.

    The responses of the chosen images (rows: images, columns: voxels) are centred per image
    across voxels, scaled to unit length (z-scores over ``sqrt(n_voxels)``) and multiplied
    by their own transpose once: ``R = Z @ Z.T``, the Pearson correlation between every two
    images' response patterns.  Only the chosen images are read (the stored chunks that
    hold them) and nothing of size ``n_images_total ** 2`` is ever made.

    Parameters
    ----------
    da : xarray.DataArray
        An entry from :func:`nest_data.open`.  EEG entries (and anything without a
        ``voxel`` dim) use every non-image dim, flattened, as features.
    images : optional
        Which images, in this order: integer positions along ``image`` (the image index of
        a stored entry), a boolean mask (``da.shared1000``), or a slice; default all (an
        RSM of ``n`` images holds ``n**2`` float64 values: keep ``n`` in the thousands).
    min_ncsnr : float, optional
        Use only voxels with ``ncsnr > min_ncsnr``.

    Returns
    -------
    xarray.DataArray
        ``rsm``, dims ``(image, image_2)``, float64, dask-backed; the image labels on
        ``image`` and again, suffixed ``_2``, on ``image_2``.  Images whose response is the
        same in every voxel have no correlation (NaN rows).

    Examples
    --------
    >>> import nest_data
    >>> da = nest_data.open(imageset="things", subject=1, roi="V1", location="demo")
    >>> r = nest_data.rsm(da, images=range(10), min_ncsnr=0.5)
    >>> r.dims, r.shape
    (('image', 'image_2'), (10, 10))
    >>> import numpy as np
    >>> bool(np.allclose(np.diag(r.values), 1.0))
    True
    """
    positions = image_positions(da, images) if "image" in da.dims else np.arange(0)
    feats = _features(select_images(da, positions), min_ncsnr)
    if positions.size < 2:
        raise InputError(f"an RSM needs at least 2 images; images= selects "
                         f"{positions.size}")
    if positions.size > _LARGE_RSM_IMAGES:
        logger.warning("rsm of %d images: %.1f GB when computed; compute parts of it or "
                       "choose fewer images", positions.size, positions.size**2 * 8 / 1e9)
    subset = feats
    n_features = subset.shape[1]
    rows = max(1, _RSM_BLOCK_BYTES // (8 * n_features))
    z = _as_dask(subset).rechunk({0: rows, 1: -1}).map_blocks(_unit_rows, dtype=np.float64)
    if z.numblocks[0] == 1:  # one task: the product of the one block with itself
        data = z.map_blocks(_self_product, chunks=(z.chunks[0], z.chunks[0]),
                            dtype=np.float64)
    else:
        data = _gram(z)
    coords: dict[str, Any] = {}
    for name, var in subset.coords.variables.items():
        if var.dims == ("image",):
            coords[str(name)] = ("image", var.values, var.attrs)
            coords[f"{name}_2"] = ("image_2", var.values, var.attrs)
    attrs = {k: v for k, v in da.attrs.items()
             if k in ("modality", "train_dataset", "model", "imageset", "subject", "roi")}
    space = _space(feats)
    attrs["analysis"] = ("Pearson correlation of z-scored responses over "
                         + counted(n_features, space or "feature")
                         + (f" with ncsnr > {min_ncsnr}" if min_ncsnr is not None else ""))
    return xr.DataArray(data, dims=("image", "image_2"), coords=coords, name="rsm",
                        attrs=attrs)


def _upper(matrix: xr.DataArray, what: str) -> dask.array.Array:
    """The strict upper triangle of a square RSM, as a 1-D dask array."""
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] < 3:
        raise InputError(f"{what} needs square RSMs of at least 3 images (from "
                         f"nest_data.rsm); got dims {matrix.dims} shape {matrix.shape}")
    rows, cols = np.triu_indices(matrix.shape[0], k=1)
    return _as_dask(matrix).vindex[rows, cols]


def _average_ranks(block: np.ndarray) -> np.ndarray:
    """Ranks (1-based) along the rows of a 2-D block, ties getting their average rank.

    A row holding NaN becomes all NaN (its correlations are undefined).
    """
    out = np.full(block.shape, np.nan, dtype=np.float64)
    for i, row in enumerate(block):
        if np.isnan(row).any():
            continue
        order = np.argsort(row, kind="mergesort")
        _, first, counts = np.unique(row[order], return_index=True, return_counts=True)
        out[i, order] = np.repeat(first + (counts + 1) / 2.0, counts)
    return out


def _row_correlations(vectors: dask.array.Array, method: str) -> dask.array.Array:
    """Correlation matrix between the rows of ``vectors`` (Pearson, or Spearman on ranks)."""
    vectors = vectors.rechunk({0: 1, 1: -1})
    if method == "spearman":
        vectors = dask.array.map_blocks(_average_ranks, vectors, dtype=np.float64)
    return _gram(dask.array.map_blocks(_unit_rows, vectors, dtype=np.float64))


def _unit_rows(block: np.ndarray) -> np.ndarray:
    """Rows centred and scaled to unit length, in float64: the product of two such rows is
    the Pearson correlation of the originals (a constant row becomes NaN, documented)."""
    x = block.astype(np.float64)
    x -= x.mean(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        x *= (1.0 / np.sqrt(np.einsum("ij,ij->i", x, x)))[:, None]
    return x


def _self_product(z: np.ndarray) -> np.ndarray:
    """``z @ z.T`` (NumPy computes it with one symmetric rank-k update)."""
    return z @ z.T


def _gram(z: dask.array.Array) -> dask.array.Array:
    """``z @ z.T`` (lazy): one block per pair of row blocks, each a single matrix product."""
    with warnings.catch_warnings():
        # n row blocks make n**2 output blocks by design; dask warns about any such growth
        warnings.simplefilter("ignore", PerformanceWarning)
        return z @ z.T


def _check_method(method: str) -> None:
    if method not in ("spearman", "pearson"):
        raise InputError(f"method must be 'spearman' or 'pearson', got {method!r}")


def rsa(a: xr.DataArray, b: xr.DataArray, *,
        method: Literal["spearman", "pearson"] = "spearman") -> xr.DataArray:
    """Representational similarity analysis: how alike two RSMs of the same images are.

    The correlation (Spearman by default, with average ranks for ties; or Pearson) between
    the strict upper triangles (``i < j``) of two RSMs from :func:`rsm`.

    Parameters
    ----------
    a, b : xarray.DataArray
        RSMs of the same images in the same order, e.g. of two ROIs or two subjects.
    method : {"spearman", "pearson"}
        The correlation.

    Returns
    -------
    xarray.DataArray
        ``rsa``, a dask-backed scalar.

    Examples
    --------
    >>> import nest_data
    >>> v1, ffa = (nest_data.open(imageset="things", subject=1, roi=roi, location="demo")
    ...            for roi in ("V1", "FFA-1"))
    >>> images = range(20)
    >>> r = nest_data.rsa(nest_data.rsm(v1, images), nest_data.rsm(ffa, images))
    >>> -1 <= float(r) <= 1
    True
    """
    _check_method(method)
    dims = ("image", "image_2")
    same = a.dims == b.dims == dims and a.shape == b.shape and all(
        np.array_equal(a[d].values, b[d].values) for d in dims if d in a.coords and d in b.coords)
    if not same:
        raise InputError("rsa compares RSMs of the same images in the same order; got "
                         f"dims {a.dims} shape {a.shape} and {b.dims} shape {b.shape}. "
                         "Make both with nest_data.rsm(..., images=the same selection).")
    vectors = dask.array.stack([_upper(a, "rsa"), _upper(b, "rsa")])
    value = _row_correlations(vectors, method)[0, 1]
    return xr.DataArray(value, name="rsa",
                        attrs={"analysis": f"{method} correlation of the upper triangles of "
                               f"two RSMs of {a.shape[0]} images", "method": method})


def rsa_matrix(
    entries: Entries, images: Any = None, *, min_ncsnr: float | None = None,
    method: Literal["spearman", "pearson"] = "spearman",
) -> xr.DataArray:
    """RSA between every two entries (subjects and/or ROIs) on one image subset.

    One RSM per entry (:func:`rsm`), then the correlation between every two of their upper
    triangles (:func:`rsa`), all in one lazy graph.

    Parameters
    ----------
    entries : xarray.DataTree, dict or list of xarray.DataArray
        Entries of the same images (e.g. :func:`nest_data.open_many`).
    images, min_ncsnr :
        As in :func:`rsm`.
    method : {"spearman", "pearson"}
        The correlation between RSMs.

    Returns
    -------
    xarray.DataArray
        ``rsa``, dims ``(entry, entry_2)``, symmetric with ones on the diagonal,
        dask-backed; coordinates ``entry`` (``sub-01/V1``), ``subject``, ``roi`` and the
        same suffixed ``_2``.

    Examples
    --------
    >>> import nest_data
    >>> tree = nest_data.open_many(imageset="things", subject=[1, 2], roi=["V1", "FFA-1"],
    ...                            location="demo")
    >>> m = nest_data.rsa_matrix(tree, images=range(20), min_ncsnr=0.5)
    >>> m.entry.values.tolist()
    ['sub-01/V1', 'sub-01/FFA-1', 'sub-02/V1', 'sub-02/FFA-1']
    >>> float(m.sel(entry="sub-01/V1", entry_2="sub-01/V1").round(6))
    1.0
    """
    _check_method(method)
    das = _entry_list(entries, "rsa_matrix")
    if len(das) < 2:
        raise InputError("rsa_matrix compares at least 2 entries; got 1. Use rsm() for one")
    _shared_image_coords(das, "rsa_matrix")
    names, subjects, rois = [], [], []
    for i, da in enumerate(das):
        subject = int(da.attrs["subject"]) if "subject" in da.attrs else -1
        roi = str(da.attrs.get("roi") or "")
        subjects.append(subject)
        rois.append(roi)
        names.append(f"sub-{subject:02d}" + (f"/{roi}" if roi else "") if subject >= 0
                     else str(i))
    if len(set(names)) != len(names):
        raise InputError(f"rsa_matrix got the same entry twice ({', '.join(names)}); pass "
                         "each once")
    vectors = dask.array.stack([_upper(rsm(da, images, min_ncsnr=min_ncsnr), "rsa_matrix")
                                for da in das])
    return xr.DataArray(
        _row_correlations(vectors, method), dims=("entry", "entry_2"), name="rsa",
        coords={"entry": names, "subject": ("entry", subjects), "roi": ("entry", rois),
                "entry_2": names, "subject_2": ("entry_2", subjects),
                "roi_2": ("entry_2", rois)},
        attrs={"analysis": f"{method} correlation of the upper triangles of each entry's RSM",
               "method": method, "imageset": das[0].attrs.get("imageset", "")})
