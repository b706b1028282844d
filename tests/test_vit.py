"""The EEG encoder (ViT-B/32 features + scaler/PCA/regressions) against a NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
special = pytest.importorskip("scipy.special")

from nest_data.encoders.vit import EegHead, VitB32, VitModel, preprocess_imagenet  # noqa: E402
from nest_data.synthetic import vit_b_32_state_dict  # noqa: E402

LAYERS = 12


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-6) * w + b


def reference_features(x: np.ndarray, sd: dict[str, np.ndarray]) -> np.ndarray:
    """The 12 block outputs of ViT-B/32, flattened and concatenated (as the spec says)."""
    b = x.shape[0]
    patches = x.reshape(b, 3, 7, 32, 7, 32).transpose(0, 2, 4, 1, 3, 5).reshape(b, 49, -1)
    tokens = patches @ sd["conv_proj.weight"].reshape(768, -1).T + sd["conv_proj.bias"]
    h = np.concatenate([np.broadcast_to(sd["class_token"], (b, 1, 768)), tokens], axis=1)
    h = h + sd["encoder.pos_embedding"]
    out = []
    for i in range(LAYERS):
        p = f"encoder.layers.encoder_layer_{i}."
        y = _layer_norm(h, sd[p + "ln_1.weight"], sd[p + "ln_1.bias"])
        qkv = y @ sd[p + "self_attention.in_proj_weight"].T + sd[p + "self_attention.in_proj_bias"]
        q, k, v = (t.reshape(b, 50, 12, 64).transpose(0, 2, 1, 3) for t in np.split(qkv, 3, -1))
        scores = q @ k.transpose(0, 1, 3, 2) / 8.0
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        attn = (scores / scores.sum(-1, keepdims=True)) @ v
        attn = attn.transpose(0, 2, 1, 3).reshape(b, 50, 768)
        h = h + attn @ sd[p + "self_attention.out_proj.weight"].T + sd[
            p + "self_attention.out_proj.bias"]
        y = _layer_norm(h, sd[p + "ln_2.weight"], sd[p + "ln_2.bias"])
        y = y @ sd[p + "mlp.0.weight"].T + sd[p + "mlp.0.bias"]
        y = 0.5 * y * (1 + special.erf(y / np.sqrt(2)))  # exact GELU
        h = h + y @ sd[p + "mlp.3.weight"].T + sd[p + "mlp.3.bias"]
        out.append(h.reshape(b, -1))
    return np.concatenate(out, axis=1)


def head_weights(n_components: int = 6, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"scaler_mean": rng.normal(0, 0.5, 460800), "scaler_scale": rng.uniform(0.5, 2, 460800),
            "pca_components": rng.normal(0, 1 / np.sqrt(460800), (n_components, 460800)),
            "pca_mean": rng.normal(0, 0.1, 460800),
            "coefs": rng.normal(0, 1, (4, 63 * 140, n_components)),
            "intercepts": rng.normal(0, 0.1, (4, 63 * 140))}


def reference_head(features: np.ndarray, w: dict[str, np.ndarray]) -> np.ndarray:
    z = (features - w["scaler_mean"]) / w["scaler_scale"]
    p = (z - w["pca_mean"]) @ w["pca_components"].T
    reps = [p @ w["coefs"][r].T + w["intercepts"][r] for r in range(4)]
    return np.stack(reps, axis=1).reshape(len(features), 4, 63, 140)


@pytest.fixture(scope="module")
def vit() -> tuple[VitB32, dict[str, np.ndarray]]:
    sd = vit_b_32_state_dict()
    return VitB32.from_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}), sd


def test_torchvision_key_layout(vit: tuple[VitB32, dict[str, np.ndarray]]) -> None:
    model, sd = vit
    assert sorted(model.state_dict()) == sorted(sd) and len(sd) == 152
    assert 87e6 < sum(p.numel() for p in model.parameters()) < 89e6
    with pytest.raises(ValueError, match="(?s)not torchvision's vit_b_32 state_dict.*conv_proj"):
        VitB32.from_state_dict({k: torch.from_numpy(v) for k, v in sd.items()
                                if not k.startswith("conv_proj")})


@pytest.mark.parametrize("batch", [1, 2])
def test_features_and_head_match_reference(vit: tuple[VitB32, dict[str, np.ndarray]],
                                           batch: int) -> None:
    model, sd = vit
    x = np.random.default_rng(2).normal(0, 1, (batch, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        got = model.features(torch.from_numpy(x)).numpy()
    expected = reference_features(x.astype(np.float64), sd)
    assert got.shape == (batch, 460800)
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)
    w = head_weights()
    head = EegHead(**{k: torch.from_numpy(v) for k, v in w.items()})
    eeg = VitModel(model, head).eval()
    with torch.no_grad():
        responses = eeg(torch.from_numpy(x)).numpy()
    assert responses.shape == (batch, 4, 63, 140)  # never squeezed, even for one image
    np.testing.assert_allclose(responses, reference_head(expected, w), rtol=1e-3, atol=1e-3)
    assert responses.std() > 0.1


def test_imagenet_preprocessing_like_pil() -> None:
    pil = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(3)
    smooth = np.cumsum(np.cumsum(rng.normal(0, 3, (301, 427, 3)), 0), 1)
    img = ((smooth - smooth.min()) / np.ptp(smooth) * 255).round().astype(np.uint8)
    got = preprocess_imagenet(torch.from_numpy(img).permute(2, 0, 1)[None]).numpy()[0]
    resized = np.asarray(pil.fromarray(img).resize((int(256 * 427 / 301), 256), pil.BILINEAR))
    top, left = round((256 - 224) / 2), round((resized.shape[1] - 224) / 2)
    crop = resized[top:top + 224, left:left + 224].transpose(2, 0, 1) / 255.0
    mean = np.array([0.485, 0.456, 0.406])[:, None, None]
    std = np.array([0.229, 0.224, 0.225])[:, None, None]
    assert np.abs(got - (crop - mean) / std).max() <= 1 / 255 / 0.224 + 1e-5  # within one level
