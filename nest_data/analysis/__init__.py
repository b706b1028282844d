"""Analyses on opened entries, lazy and ready for ``dask.distributed``.

Every function takes entries from :func:`nest_data.open` / :func:`nest_data.open_many` and
returns labelled xarray objects:

- :func:`roi_mean` and :func:`roi_means`: ROI mean per image (reliable voxels by ``ncsnr``),
  for one entry or for subjects x ROIs whose voxel counts differ;
- :func:`top_images`: the images that drive an ROI (or a subject-averaged ROI) most or least;
- :func:`univariate_rnc`: univariate relational neural control for a pair of ROIs;
- :func:`multivariate_rnc`: multivariate relational neural control (RSMs of two ROIs aligned
  or disentangled by a genetic search), without RSMs on disk;
- :func:`rsm`, :func:`rsa` and :func:`rsa_matrix`: representational similarity of an image
  subset computed on the fly from the responses, and its comparison between entries;
- :func:`select_images`: ``da.isel(image=...)`` reading only the stored chunks that hold
  the chosen images;
- :func:`surface_space`: fsaverage5 (or another coarser mesh) of an fsaverage entry.

Functions that return values of the responses return them dask-backed: nothing is read
until you compute, and then it runs on whatever dask scheduler is active (a
``distributed.Client`` included), a stored chunk at a time.  :func:`top_images` and
:func:`univariate_rnc` must see the scores to pick images: they compute the ROI means (the
only pass over the responses, with a progress bar) and work on those few numbers.
"""

from nest_data.analysis.means import roi_mean, roi_means
from nest_data.analysis.multivariate import multivariate_rnc
from nest_data.analysis.rnc import RNC_CONDITIONS, random_batches, univariate_rnc
from nest_data.analysis.selection import select_images
from nest_data.analysis.similarity import rsa, rsa_matrix, rsm
from nest_data.analysis.surface import surface_space
from nest_data.analysis.top import top_images

__all__ = ["RNC_CONDITIONS", "multivariate_rnc", "random_batches", "roi_mean",
           "roi_means", "rsa", "rsa_matrix", "rsm", "select_images", "surface_space",
           "top_images", "univariate_rnc"]
