"""The NEST fMRI encoder: a feature-weighted receptive field model (fwRF), in plain torch.

St-Yves & Naselaris (2018), the ``gnet8x`` variant NEST trained on NSD.  The modules and
their ``state_dict`` keys are exactly those of NEST's ``Encoder`` (here
:class:`FeatureExtractor`, 54 keys, ~1.37 M parameters) and ``LayerwiseFWRF`` readout, so the
original weights load unchanged once a converter has turned NEST's pickles into safetensors:

- ``FeatureExtractor(mu)``: ``pre.conv1`` (Conv 11x11/4 -> ReLU -> MaxPool 3/2) and
  ``pre.conv2`` (Conv 5x5 -> ReLU); ``enc.bn1`` -> Dropout2d -> ``enc.conv3`` (3x3) -> ReLU;
  six trunk blocks ``enc.conv{4,5,6}{a,b}`` (BN -> Dropout2d -> Conv 3x3 -> ReLU), with a 3/2
  max pool before ``conv5a``.  It returns three 256-channel maps: (27, 27), (25, 25), (13, 13)
  for a 227-pixel input.
- ``LayerwiseFWRF``: per voxel a softmax receptive field over each map's space pools the
  nonlinearly transformed features; the pooled 768 features, transformed again, are
  weighted and summed.

Preprocessing (:func:`preprocess`): uint8 RGB, square, resized to 227 px (bilinear,
antialias, rounded back to uint8), divided by 255; the encoder subtracts ``mu``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["INPUT_SIZE", "FeatureExtractor", "FwrfModel", "LayerwiseFWRF", "nl", "preprocess",
           "preprocess_float"]

INPUT_SIZE = 227
FEATURE_SIZES = (27, 25, 13)
VOXEL_BLOCK_ELEMENTS = 2**21  # voxels x images x 768 pooled features computed at once


def nl(x: torch.Tensor) -> torch.Tensor:
    """The fwRF nonlinearity ``log(1 + |x|) * tanh(x)``."""
    return torch.log1p(torch.abs(x)) * torch.tanh(x)


class _PreFilter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
                                   nn.ReLU(inplace=True), nn.MaxPool2d(kernel_size=3, stride=2))
        self.conv2 = nn.Sequential(nn.Conv2d(64, 192, kernel_size=5, padding=2),
                                   nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c1 = self.conv1(x)
        return c1, self.conv2(c1)


class _TrunkBlock(nn.Module):
    def __init__(self, feat_in: int, feat_out: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(feat_in, eps=1e-5)
        self.drop = nn.Dropout2d(p=0.5)
        self.conv1 = nn.Conv2d(feat_in, feat_out, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv1(self.drop(self.bn1(x))))


class _EncStage(nn.Module):
    def __init__(self, trunk_width: int = 64) -> None:
        super().__init__()
        width = 2 * trunk_width
        self.bn1 = nn.BatchNorm2d(192, eps=1e-5)
        self.drop1 = nn.Dropout2d(p=0.5)
        self.conv3 = nn.Conv2d(192, width, kernel_size=3, padding=0)
        self.conv4a = _TrunkBlock(width, width)
        self.conv4b = _TrunkBlock(width, width)
        self.pool1 = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.conv5a = _TrunkBlock(width, width)
        self.conv5b = _TrunkBlock(width, width)
        self.conv6a = _TrunkBlock(width, width)
        self.conv6b = _TrunkBlock(width, trunk_width)
        self.trunk_width = trunk_width

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        half = self.trunk_width
        c3 = F.relu(self.conv3(self.drop1(self.bn1(x))))
        c4a = self.conv4a(c3)
        c4b = self.conv4b(c4a)
        c5a = self.conv5a(self.pool1(c4b))
        c5b = self.conv5b(c5a)
        c6a = self.conv6a(c5b)
        c6b = self.conv6b(c6a)
        return (torch.cat([c3, c4a[:, :half], c4b[:, :half]], dim=1),
                torch.cat([c5a[:, :half], c5b[:, :half], c6a[:, :half], c6b], dim=1))


class FeatureExtractor(nn.Module):
    """NEST's shared feature extractor (``best_params['enc']``; ``Encoder`` in NEST's code).

    Parameters
    ----------
    mu : torch.Tensor
        Mean stimulus ``(1, 3, 1, 1)`` subtracted from the input (``stim_mean``).
    trunk_width : int
        Width of the trunk (64 in NEST).
    """

    def __init__(self, mu: torch.Tensor, trunk_width: int = 64) -> None:
        super().__init__()
        self.mu = nn.Parameter(torch.as_tensor(mu, dtype=torch.float32).reshape(1, 3, 1, 1),
                               requires_grad=False)
        self.pre = _PreFilter()
        self.enc = _EncStage(trunk_width)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps ``[(B,256,27,27), (B,256,25,25), (B,256,13,13)]`` for 227 px input."""
        c1, c2 = self.pre(x - self.mu)
        mid, top = self.enc(c2)
        return [torch.cat([c1, c2], dim=1), mid, top]


class LayerwiseFWRF(nn.Module):
    """NEST's per-voxel readout (``best_params['fwrfs'][subject]``).

    Parameters
    ----------
    n_voxels : int
        Voxels predicted.
    feature_sizes : sequence of int
        Spatial size of each feature map (27, 25, 13 for 227 px input).
    n_features : int
        Channels summed over all maps (768).
    """

    def __init__(self, n_voxels: int, feature_sizes: Sequence[int] = FEATURE_SIZES,
                 n_features: int = 768) -> None:
        super().__init__()
        for k, size in enumerate(feature_sizes):
            self.register_parameter(f"rf{k}", nn.Parameter(torch.zeros(n_voxels, size, size)))
        self.w = nn.Parameter(torch.zeros(n_voxels, n_features))
        self.b = nn.Parameter(torch.zeros(n_voxels))
        self.n_maps = len(feature_sizes)

    def forward(self, feature_maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """Responses ``(B, n_voxels)`` from the encoder's feature maps."""
        features = [nl(fmap.flatten(2)) for fmap in feature_maps]  # (B, C, S) per map
        n_voxels = self.w.shape[0]
        # Voxels in blocks: the pooled features are (voxels, batch, 768); whole, they outgrow
        # the caches (and memory) for large ROIs and batches.
        step = max(1, VOXEL_BLOCK_ELEMENTS // (features[0].shape[0] * self.w.shape[1]))
        out = []
        for start in range(0, n_voxels, step):
            block = slice(start, start + step)
            pooled = []
            for k, f in enumerate(features):
                rf = getattr(self, f"rf{k}")[block]
                g = torch.softmax(rf.flatten(1), dim=1)  # (V, S)
                pooled.append(torch.einsum("vs,bcs->vbc", g, f))
            phi = nl(torch.cat(pooled, dim=2))  # (V, B, 768)
            out.append(torch.einsum("vbc,vc->bv", phi, self.w[block]) + self.b[block])
        return torch.cat(out, dim=1)


class FwrfModel(nn.Module):
    """One fwRF encoder (or the two halves NEST trained for ``lateral`` and ``ventral``).

    Parameters
    ----------
    parts : sequence of (FeatureExtractor, LayerwiseFWRF)
        The encoders, whose outputs are concatenated along voxels (NEST split the voxels of
        ``lateral`` and ``ventral`` at ``ceil(n / 2)`` and trained one encoder per half).

    Examples
    --------
    >>> import torch
    >>> enc = FeatureExtractor(torch.zeros(3))
    >>> model = FwrfModel([(enc, LayerwiseFWRF(5))]).eval()
    >>> model(torch.zeros(2, 3, 227, 227)).shape
    torch.Size([2, 5])
    """

    def __init__(self, parts: Sequence[tuple[FeatureExtractor, LayerwiseFWRF]]) -> None:
        super().__init__()
        self.encoders = nn.ModuleList(e for e, _ in parts)
        self.readouts = nn.ModuleList(r for _, r in parts)
        self._voxels = [int(r.w.shape[0]) for _, r in parts]

    @classmethod
    def from_state_dicts(
        cls, parts: Sequence[tuple[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]]]
    ) -> FwrfModel:
        """Build from ``(encoder state_dict, readout state_dict)`` pairs in NEST's key layout.

        Raises
        ------
        ValueError
            When a state_dict's keys or shapes differ from NEST's (the message lists them).
        """
        modules = []
        for enc_sd, fwrf_sd in parts:
            encoder = FeatureExtractor(enc_sd["mu"])
            readout = LayerwiseFWRF(int(fwrf_sd["w"].shape[0]))
            for module, state in ((encoder, enc_sd), (readout, fwrf_sd)):
                try:
                    module.load_state_dict(dict(state), strict=True)
                except RuntimeError as exc:
                    raise ValueError(f"the weights do not match NEST's fwRF layout: {exc}"
                                     ) from exc
            modules.append((encoder, readout))
        return cls(modules).eval()

    @property
    def n_voxels(self) -> int:
        """Voxels predicted (summed over the halves)."""
        return sum(self._voxels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Responses ``(B, n_voxels)`` from preprocessed images ``(B, 3, 227, 227)`` in [0, 1]."""
        return torch.cat([readout(encoder(x)) for encoder, readout
                          in zip(self.encoders, self.readouts, strict=True)], dim=1)


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """NEST's fwRF preprocessing: uint8 ``(B, 3, H, W)`` square -> float ``(B, 3, 227, 227)``.

    Bilinear resize with antialiasing (as torchvision's tensor ``Resize``), rounded back to
    uint8, then divided by 255.  No standardisation: the encoder subtracts ``mu``.

    Examples
    --------
    >>> import torch
    >>> preprocess(torch.full((1, 3, 300, 300), 255, dtype=torch.uint8)).max().item()
    1.0
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected uint8 images of shape (B, 3, H, W), got {images.dtype} "
                         f"{tuple(images.shape)}")
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"fwRF images must be square, got {images.shape[-2]}x"
                         f"{images.shape[-1]}; crop them first")
    x = images
    if images.shape[-1] != INPUT_SIZE:
        x = _resize(images.float()).round_().clamp_(0, 255)
    return x.float() / 255.0


def preprocess_float(images: torch.Tensor) -> torch.Tensor:
    """:func:`preprocess` for float images in [0, 1], differentiable: no rounding to uint8.

    The same resize of the same arithmetic, so for images already at 227 pixels it returns
    what :func:`preprocess` returns for their uint8 values; otherwise the two differ by the
    rounding only (at most 0.5/255 per pixel).

    Examples
    --------
    >>> import torch
    >>> x = torch.rand(1, 3, 64, 64, requires_grad=True)
    >>> preprocess_float(x).sum().backward()
    >>> x.grad.shape
    torch.Size([1, 3, 64, 64])
    """
    if not images.is_floating_point() or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected float images of shape (B, 3, H, W) in [0, 1], got "
                         f"{images.dtype} {tuple(images.shape)}")
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"fwRF images must be square, got {images.shape[-2]}x"
                         f"{images.shape[-1]}; crop them first")
    if images.shape[-1] == INPUT_SIZE:
        return images
    return _resize(images * 255.0) / 255.0


def _resize(x: torch.Tensor) -> torch.Tensor:
    """Bilinear resize with antialiasing to 227 x 227 (torchvision's tensor ``Resize``)."""
    return F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear",
                         align_corners=False, antialias=True)
