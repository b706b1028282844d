"""Figure pieces shared by the CLI's PNGs and the examples (matplotlib: ``nest-data[plot]``)."""

from __future__ import annotations

from typing import Any

import numpy as np


def plot_saliency(ax: Any, image: np.ndarray, per_pixel: np.ndarray) -> Any:
    """Draw a saliency map over its image (in grey) on ``ax``, with a labelled colorbar.

    The colours are clipped at the 99th percentile of the absolute values (a few pixels
    would wash the map out).  Needs matplotlib (the ``plot`` extra).

    Parameters
    ----------
    ax : matplotlib.axes.Axes
        Where to draw.
    image : array (height, width, 3)
        The image the map explains (uint8, or floats in [0, 1]).
    per_pixel : array (height, width)
        One value per pixel, e.g. ``nest_data.saliency(...).sum("rgb")[0]``.

    Returns
    -------
    matplotlib.colorbar.Colorbar
        The colorbar, labelled.

    Examples
    --------
    >>> import numpy as np
    >>> from matplotlib.figure import Figure
    >>> ax = Figure().subplots()
    >>> plot_saliency(ax, np.zeros((8, 8, 3)), np.arange(64.0).reshape(8, 8)).ax.get_ylabel()
    'objective per pixel\\n(summed over R, G, B;\\nclipped at the 99th pct)'
    """
    from matplotlib.ticker import FormatStrFormatter

    limit = float(np.percentile(np.abs(per_pixel), 99)) or 1.0
    ax.imshow(np.asarray(image).mean(axis=2), cmap="gray")
    shown = ax.imshow(per_pixel, cmap="RdBu_r", vmin=-limit, vmax=limit, alpha=0.8)
    bar = ax.figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.04,
                             format=FormatStrFormatter("%.2g"))  # no offset text to collide
    bar.set_label("objective per pixel\n(summed over R, G, B;\nclipped at the 99th pct)",
                  fontsize=7)
    bar.ax.tick_params(labelsize=7)
    ax.set_xticks([])
    ax.set_yticks([])
    return bar
