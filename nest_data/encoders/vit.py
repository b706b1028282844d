"""The ViT-B/32 encoders: ImageNet ViT-B/32 features -> scaler -> PCA -> linear regressions.

Two NEST models share this: the THINGS-EEG2 EEG encoder (one regression per training
repetition, :class:`EegHead`) and BERG's fsaverage fMRI encoder (one regression per
hemisphere, :class:`SurfaceHead`).

Plain torch, loading torchvision's ``vit_b_32`` state_dict unchanged (keys ``conv_proj.*``,
``class_token``, ``encoder.pos_embedding``, ``encoder.layers.encoder_layer_{i}.*``,
``encoder.ln.*``, ``heads.head.*``).  The features are the outputs of the 12 encoder blocks
(after each block's MLP residual add), each 50 tokens x 768, flattened and concatenated in
layer order: 460,800 values per image.  The head standardises them (``scaler.mean_``,
``scale_``), projects them on the PCA components (:class:`PcaReadout`), and applies its
regressions: ``(B, 4, 63, 140)`` for EEG, ``(B, n_vertices)`` for the surface.

Preprocessing (torchvision's IMAGENET1K_V1 transforms on uint8 tensors): resize the shorter
side to 256 (bilinear, antialias, rounded to uint8), center crop 224, /255, normalise with
ImageNet's mean and std.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["EegHead", "PcaReadout", "SurfaceHead", "VitB32", "VitModel", "preprocess_imagenet",
           "preprocess_imagenet_float"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HIDDEN, LAYERS, HEADS, MLP, PATCH, TOKENS = 768, 12, 12, 3072, 32, 50


class _Block(nn.Module):
    """torchvision's ``EncoderBlock``: pre-norm attention and MLP, each with a residual."""

    def __init__(self) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(HIDDEN, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(HIDDEN, HEADS, batch_first=True)
        self.ln_2 = nn.LayerNorm(HIDDEN, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(HIDDEN, MLP), nn.GELU(), nn.Dropout(0.0),
                                 nn.Linear(MLP, HIDDEN), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        y, _ = self.self_attention(y, y, y, need_weights=False)
        x = x + y
        return x + self.mlp(self.ln_2(x))


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.zeros(1, TOKENS, HIDDEN))
        self.layers = nn.ModuleDict({f"encoder_layer_{i}": _Block() for i in range(LAYERS)})
        self.ln = nn.LayerNorm(HIDDEN, eps=1e-6)


class _Heads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(HIDDEN, 1000)


class VitB32(nn.Module):
    """ViT-B/32 with torchvision's parameter names, returning the 12 block outputs.

    Examples
    --------
    >>> import torch
    >>> VitB32().eval().features(torch.zeros(1, 3, 224, 224)).shape
    torch.Size([1, 460800])
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv_proj = nn.Conv2d(3, HIDDEN, kernel_size=PATCH, stride=PATCH)
        self.class_token = nn.Parameter(torch.zeros(1, 1, HIDDEN))
        self.encoder = _Encoder()
        self.heads = _Heads()  # unused for features; kept so torchvision files load strictly

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor]) -> VitB32:
        """Load torchvision's ``vit_b_32`` state_dict; raise ValueError on any mismatch."""
        model = cls()
        try:
            model.load_state_dict(dict(state), strict=True)
        except RuntimeError as exc:
            raise ValueError(f"the file is not torchvision's vit_b_32 state_dict: {exc}") from exc
        return model.eval()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 460800)``: every block's output (50 tokens x 768), in layer order."""
        tokens = self.conv_proj(x).flatten(2).transpose(1, 2)  # (B, 49, 768)
        cls = self.class_token.expand(x.shape[0], -1, -1)
        h = torch.cat([cls, tokens], dim=1) + self.encoder.pos_embedding
        outputs = []
        for i in range(LAYERS):
            h = self.encoder.layers[f"encoder_layer_{i}"](h)
            outputs.append(h.flatten(1))
        return torch.cat(outputs, dim=1)


class PcaReadout(nn.Module):
    """Scaler -> PCA of ViT-B/32 features, then a linear readout (subclasses define it).

    Parameters
    ----------
    scaler_mean, scaler_scale : torch.Tensor
        ``StandardScaler`` ``mean_`` and ``scale_``, shape ``(460800,)``.
    pca_components, pca_mean : torch.Tensor
        ``components_`` ``(n_components, 460800)`` and ``mean_`` ``(460800,)``.
    """

    scaler_mean: torch.Tensor
    scaler_scale: torch.Tensor
    pca_components: torch.Tensor
    pca_mean: torch.Tensor

    def __init__(self, scaler_mean: torch.Tensor, scaler_scale: torch.Tensor,
                 pca_components: torch.Tensor, pca_mean: torch.Tensor,
                 **readout: torch.Tensor) -> None:
        super().__init__()
        for name, value in (("scaler_mean", scaler_mean), ("scaler_scale", scaler_scale),
                            ("pca_components", pca_components), ("pca_mean", pca_mean),
                            *readout.items()):
            self.register_buffer(name, torch.as_tensor(value, dtype=torch.float32))

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, n_components)``: standardised features projected on the PCA components."""
        z = (features - self.scaler_mean) / self.scaler_scale
        return (z - self.pca_mean) @ self.pca_components.T


class EegHead(PcaReadout):
    """Scaler -> PCA -> one linear regression per repetition: features -> (B, R, 63, 140).

    ``coefs`` ``(R, 63 * 140, n_components)`` and ``intercepts`` ``(R, 63 * 140)`` are the
    stacked regressions; the other parameters are :class:`PcaReadout`'s.
    """

    coefs: torch.Tensor
    intercepts: torch.Tensor

    def __init__(self, scaler_mean: torch.Tensor, scaler_scale: torch.Tensor,
                 pca_components: torch.Tensor, pca_mean: torch.Tensor, coefs: torch.Tensor,
                 intercepts: torch.Tensor, channels: int = 63, times: int = 140) -> None:
        super().__init__(scaler_mean, scaler_scale, pca_components, pca_mean, coefs=coefs,
                         intercepts=intercepts)
        self.shape = (channels, times)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        p = self.project(features)
        y = torch.einsum("bk,rok->bro", p, self.coefs) + self.intercepts  # (B, R, 63 * 140)
        return y.reshape(features.shape[0], -1, *self.shape)


class SurfaceHead(PcaReadout):
    """Scaler -> PCA -> one linear regression per vertex: features -> ``(B, n_vertices)``.

    BERG's fsaverage model has one regression per hemisphere; ``coef`` ``(n_vertices,
    n_components)`` and ``intercept`` ``(n_vertices,)`` hold the vertices of both (left
    first), or any selection of them.
    """

    coef: torch.Tensor
    intercept: torch.Tensor

    def __init__(self, scaler_mean: torch.Tensor, scaler_scale: torch.Tensor,
                 pca_components: torch.Tensor, pca_mean: torch.Tensor, coef: torch.Tensor,
                 intercept: torch.Tensor) -> None:
        super().__init__(scaler_mean, scaler_scale, pca_components, pca_mean, coef=coef,
                         intercept=intercept)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.intercept, self.project(features), self.coef.T)


class VitModel(nn.Module):
    """ViT-B/32 features and one subject's readout: images -> the readout's responses."""

    def __init__(self, backbone: VitB32, head: PcaReadout) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Responses from preprocessed images ``(B, 3, 224, 224)``."""
        return self.head(self.backbone.features(x))


def preprocess_imagenet(images: torch.Tensor) -> torch.Tensor:
    """IMAGENET1K_V1 preprocessing of uint8 ``(B, 3, H, W)`` images -> ``(B, 3, 224, 224)``.

    Examples
    --------
    >>> import torch
    >>> preprocess_imagenet(torch.zeros(2, 3, 300, 400, dtype=torch.uint8)).shape
    torch.Size([2, 3, 224, 224])
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected uint8 images of shape (B, 3, H, W), got {images.dtype} "
                         f"{tuple(images.shape)}")
    x = _resize_256(images.float()).round_().clamp_(0, 255)
    return _crop_normalise(x / 255.0)


def preprocess_imagenet_float(images: torch.Tensor) -> torch.Tensor:
    """:func:`preprocess_imagenet` for float images in [0, 1], differentiable (no rounding).

    The same resize, crop and normalisation; the two differ by the uint8 rounding of the
    resized image only (at most 0.5/255 per pixel before normalisation).

    Examples
    --------
    >>> import torch
    >>> x = torch.rand(1, 3, 300, 300, requires_grad=True)
    >>> preprocess_imagenet_float(x).shape
    torch.Size([1, 3, 224, 224])
    """
    if not images.is_floating_point() or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected float images of shape (B, 3, H, W) in [0, 1], got "
                         f"{images.dtype} {tuple(images.shape)}")
    return _crop_normalise(_resize_256(images * 255.0) / 255.0)


def _resize_256(x: torch.Tensor) -> torch.Tensor:
    """Resize the shorter side to 256 (bilinear, antialias), torchvision's arithmetic."""
    height, width = (int(v) for v in x.shape[-2:])
    short, long = min(height, width), max(height, width)
    new_long = int(256 * long / short)  # torchvision's arithmetic, truncation included
    size = (256, new_long) if height <= width else (new_long, 256)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def _crop_normalise(x: torch.Tensor) -> torch.Tensor:
    """Center crop 224 (torchvision's rounding) and ImageNet's normalisation."""
    top = round((x.shape[-2] - 224) / 2.0)  # torchvision's center_crop rounds
    left = round((x.shape[-1] - 224) / 2.0)
    x = x[..., top:top + 224, left:left + 224]
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).reshape(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).reshape(1, 3, 1, 1)
    return (x - mean) / std
