"""Image parametrisations and the random transforms that make optimised images robust.

Feature-visualisation practice: optimising raw pixels finds high-frequency patterns that
drive a network but look like noise.  A decorrelated parametrisation optimises a 1/f-scaled
Fourier spectrum in a decorrelated colour space instead (every frequency and colour
direction then learns at a similar rate), and small random jitter, scaling and rotation at
every step keep only what survives them.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from nest_data.errors import InputError

__all__ = ["COLOUR_CORRELATION", "FourierImage", "PixelImage", "random_transform"]

#: Square root of natural images' RGB correlation (ImageNet; the columns are its principal
#: directions scaled by the square roots of their variances), as feature visualisation uses.
COLOUR_CORRELATION = ((0.26, 0.09, 0.02), (0.27, 0.00, -0.05), (0.27, -0.09, 0.03))


def _decorrelated(x: torch.Tensor) -> torch.Tensor:
    """Map (B, 3, H, W) from the decorrelated colour space to RGB."""
    matrix = torch.tensor(COLOUR_CORRELATION, dtype=x.dtype, device=x.device)
    matrix = matrix / matrix.norm(dim=0).max()
    return torch.einsum("bchw,dc->bdhw", x, matrix)


class FourierImage(nn.Module):
    """``n`` images ``(n, 3, size, size)`` in [0, 1] from a 1/f-scaled spectrum.

    Parameters
    ----------
    n, size : int
        Images and their side in pixels.
    generator : torch.Generator
        Draws the initial spectrum (small noise), so a seed fixes the start.
    decorrelate : bool
        Optimise in the decorrelated colour space (:data:`COLOUR_CORRELATION`).
    decay : float
        The spectrum's scale falls as ``1 / frequency ** decay``.

    Examples
    --------
    >>> import torch
    >>> image = FourierImage(2, 64, generator=torch.Generator().manual_seed(0))
    >>> x = image()
    >>> tuple(x.shape), bool(x.min() >= 0), bool(x.max() <= 1)
    ((2, 3, 64, 64), True, True)
    """

    def __init__(self, n: int, size: int, *, generator: torch.Generator,
                 decorrelate: bool = True, decay: float = 1.0) -> None:
        super().__init__()
        fy = torch.fft.fftfreq(size)[:, None]
        fx = torch.fft.rfftfreq(size)[None, :]
        frequency = torch.sqrt(fx**2 + fy**2)
        self.scale: torch.Tensor
        self.register_buffer("scale", 1.0 / torch.clamp(frequency, min=1.0 / size) ** decay)
        self.spectrum = nn.Parameter(
            0.01 * torch.randn(n, 3, size, size // 2 + 1, 2, generator=generator))
        self.size = size
        self.decorrelate = decorrelate

    def forward(self) -> torch.Tensor:
        """The images, ``(n, 3, size, size)`` in [0, 1]."""
        spectrum = torch.view_as_complex(self.spectrum) * self.scale
        x = torch.fft.irfft2(spectrum, s=(self.size, self.size), norm="ortho")
        if self.decorrelate:
            x = _decorrelated(x)
        return torch.sigmoid(x)


class PixelImage(nn.Module):
    """``n`` images ``(n, 3, size, size)`` in [0, 1] as pixels behind a sigmoid.

    Examples
    --------
    >>> import torch
    >>> PixelImage(1, 8, generator=torch.Generator().manual_seed(0))().shape
    torch.Size([1, 3, 8, 8])
    """

    def __init__(self, n: int, size: int, *, generator: torch.Generator,
                 decorrelate: bool = False) -> None:
        super().__init__()
        self.pixels = nn.Parameter(0.01 * torch.randn(n, 3, size, size, generator=generator))
        self.decorrelate = decorrelate

    def forward(self) -> torch.Tensor:
        """The images, ``(n, 3, size, size)`` in [0, 1]."""
        x = _decorrelated(self.pixels) if self.decorrelate else self.pixels
        return torch.sigmoid(x)


def random_transform(images: torch.Tensor, *, generator: torch.Generator, jitter: float,
                     scale: tuple[float, float], rotate: float) -> torch.Tensor:
    """Shift each image by up to ``jitter`` pixels, scale it within ``scale``, rotate it by
    up to ``rotate`` degrees: one differentiable resampling, edges reflected.

    Examples
    --------
    >>> import torch
    >>> x = torch.rand(2, 3, 32, 32)
    >>> same = random_transform(x, generator=torch.Generator(), jitter=0, scale=(1, 1),
    ...                         rotate=0)
    >>> bool(torch.allclose(same, x, atol=1e-5))
    True
    """
    n, _, height, width = images.shape

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=generator, dtype=images.dtype)

    angle = uniform(-rotate, rotate) * (math.pi / 180.0)
    zoom = uniform(*scale)
    shift_x = uniform(-jitter, jitter) * (2.0 / width)  # pixels -> grid units
    shift_y = uniform(-jitter, jitter) * (2.0 / height)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, shift_x], dim=1),
                         torch.stack([sin, cos, shift_y], dim=1)], dim=1).to(images.device)
    if not bool(torch.isfinite(theta).all()):  # grid_sample's backward crashes on NaN
        raise InputError(f"random_transform(jitter={jitter!r}, scale={scale!r}, "
                         f"rotate={rotate!r}) gives a NaN or infinite transform; give finite "
                         "numbers, scale > 0 (nest_data.dream checks them first)")
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection",
                         align_corners=False)
