"""Cortical-surface entries (BERG's fsaverage model): vertex labels and the store's vertex order.

An fsaverage entry has one value per vertex of both hemispheres (163,842 each).  Its store
holds the whole surface, chunked along ``image`` and ``vertex``; an ROI is a set of vertices
read from that one store.  On fsaverage, the vertices of one ROI are scattered over the
whole index range (the icosahedral mesh numbers vertices level by level), so in index order
any ROI would touch every vertex chunk.  Stores therefore keep vertices in *ROI order*:
vertices are grouped by the ROIs that contain them (largest ROI first, so nested ROIs stay
inside their parent's run) and by index within a group.  The ``vertex`` coordinate keeps
each vertex's global index (left hemisphere ``0..n_lh-1``, right ``n_lh..``), so values are
labelled the same whatever the order; ``hemisphere`` and ``fsaverage_index`` say where each
vertex is on the mesh.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["HEMISPHERES", "N_FSAVERAGE_VERTICES", "ROI_AUX_PREFIX", "roi_positions",
           "store_order", "surface_labels"]

#: Vertices per hemisphere of FreeSurfer's fsaverage (icosahedron order 7).
N_FSAVERAGE_VERTICES = 163842
HEMISPHERES = ("lh", "rh")
#: Name prefix of the per-ROI vertex positions in a surface store's ``encoder/`` group.
ROI_AUX_PREFIX = "roi-"


def surface_labels(n_lh: int, n_rh: int) -> dict[str, np.ndarray]:
    """``vertex`` (global index), ``hemisphere`` and ``fsaverage_index`` in index order.

    Examples
    --------
    >>> labels = surface_labels(3, 2)
    >>> labels["vertex"].tolist(), labels["hemisphere"].tolist(), labels["fsaverage_index"].tolist()
    ([0, 1, 2, 3, 4], ['lh', 'lh', 'lh', 'rh', 'rh'], [0, 1, 2, 0, 1])
    """
    return {"vertex": np.arange(n_lh + n_rh, dtype=np.int64),
            "hemisphere": np.array(["lh"] * n_lh + ["rh"] * n_rh),
            "fsaverage_index": np.concatenate([np.arange(n_lh), np.arange(n_rh)]
                                              ).astype(np.int64)}


def store_order(rois: Mapping[str, np.ndarray], n_vertices: int) -> np.ndarray:
    """The global vertex indices in the order a surface store keeps them (ROI order).

    Parameters
    ----------
    rois : mapping
        ROI name -> global vertex indices (both hemispheres).
    n_vertices : int
        Vertices of both hemispheres.

    Returns
    -------
    numpy.ndarray
        A permutation of ``0..n_vertices-1``: vertices of the largest ROI first, then the
        next largest among the rest, and so on, each group sorted by hemisphere and index;
        vertices in no ROI last.  Nested or overlapping ROIs stay in few contiguous runs.

    Examples
    --------
    >>> import numpy as np
    >>> store_order({"a": np.array([5, 1]), "b": np.array([1])}, 6).tolist()
    [1, 5, 0, 2, 3, 4]
    """
    by_size = sorted(rois, key=lambda name: (-len(rois[name]), name))[:62]
    key = np.zeros(n_vertices, dtype=np.int64)
    for bit, name in enumerate(by_size):
        member = np.zeros(n_vertices, dtype=bool)
        member[np.asarray(rois[name], dtype=np.int64)] = True
        key |= (~member).astype(np.int64) << (len(by_size) - 1 - bit)
    return np.lexsort((np.arange(n_vertices), key)).astype(np.int64)


def roi_positions(order: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Positions in a store of ``order`` that hold ``vertices``, in index order of the vertices.

    Reading ``responses[:, positions]`` gives the vertices in BERG's order (left hemisphere
    first, by index), the order :func:`nest_data.encode` returns them in.

    Examples
    --------
    >>> import numpy as np
    >>> roi_positions(np.array([1, 5, 0, 2, 3, 4]), np.array([5, 0])).tolist()
    [2, 1]
    """
    where = np.empty(len(order), dtype=np.int64)
    where[order] = np.arange(len(order))
    return where[np.sort(np.asarray(vertices, dtype=np.int64))]
