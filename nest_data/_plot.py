"""Figure pieces shared by the CLI's PNGs and the examples (matplotlib: ``nest-data[plot]``)."""

from __future__ import annotations

from typing import Any

import numpy as np


def draw_saliency(ax: Any, image: np.ndarray, per_pixel: np.ndarray) -> Any:
    """Draw a saliency map over its image (in grey) on ``ax``, with a labelled colorbar.

    ``image`` is (height, width, 3) and ``per_pixel`` (height, width), e.g.
    ``saliency(...).sum("rgb")`` of one image.  The colours are clipped at the 99th
    percentile of the absolute values (a few pixels would wash the map out).  Returns the
    colorbar.

    Examples
    --------
    >>> import numpy as np
    >>> from matplotlib.figure import Figure
    >>> ax = Figure().subplots()
    >>> draw_saliency(ax, np.zeros((8, 8, 3)), np.arange(64.0).reshape(8, 8)).ax.get_ylabel()
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
