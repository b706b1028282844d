"""Gradients through the encoders: images optimised for an objective (:func:`dream`) and
per-pixel attributions (:func:`saliency`).  Needs torch (``nest-data[encode]``)."""

from nest_data.gradients import objectives
from nest_data.gradients.dream import dream
from nest_data.gradients.saliency import saliency

__all__ = ["dream", "objectives", "saliency"]
