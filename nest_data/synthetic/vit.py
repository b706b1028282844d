"""EEG and fsaverage weights in BERG's (or NED's) ``.npy`` layouts; ViT-B/32 as a ``.pth``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from nest_data.synthetic.responses import _eeg_metadata, _nsd_design, _rng, _save_pickle

#: File name of torchvision's ImageNet ViT-B/32 weights (IMAGENET1K_V1).
VIT_B_32_FILE = "vit_b_32-d86f8d99.pth"
_VIT_LAYERS, _VIT_HIDDEN, _VIT_MLP = 12, 768, 3072
_EEG_FEATURES = 50 * _VIT_HIDDEN * _VIT_LAYERS  # 460,800


def vit_b_32_state_dict(seed: int = 0) -> dict[str, np.ndarray]:
    """Random ViT-B/32 weights in torchvision's ``vit_b_32`` key layout (152 keys, 88 M values).

    Small ViT-style initialisation (normal, std 0.02-0.05; layer norms near 1), so features
    stay finite and vary with the image.

    Examples
    --------
    >>> sd = vit_b_32_state_dict()
    >>> len(sd), sd["conv_proj.weight"].shape
    (152, (768, 3, 32, 32))
    """
    rng = _rng(seed, "vit_b_32")

    def normal(*shape: int, std: float = 0.02) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * np.float32(std))

    h, m = _VIT_HIDDEN, _VIT_MLP
    sd = {"conv_proj.weight": normal(h, 3, 32, 32), "conv_proj.bias": normal(h),
          "class_token": normal(1, 1, h), "encoder.pos_embedding": normal(1, 50, h),
          "encoder.ln.weight": 1 + normal(h), "encoder.ln.bias": normal(h),
          "heads.head.weight": normal(1000, h), "heads.head.bias": normal(1000)}
    for i in range(_VIT_LAYERS):
        p = f"encoder.layers.encoder_layer_{i}."
        sd.update({p + "ln_1.weight": 1 + normal(h), p + "ln_1.bias": normal(h),
                   p + "self_attention.in_proj_weight": normal(3 * h, h, std=0.05),
                   p + "self_attention.in_proj_bias": normal(3 * h),
                   p + "self_attention.out_proj.weight": normal(h, h, std=0.05),
                   p + "self_attention.out_proj.bias": normal(h),
                   p + "ln_2.weight": 1 + normal(h), p + "ln_2.bias": normal(h),
                   p + "mlp.0.weight": normal(m, h, std=0.05), p + "mlp.0.bias": normal(m),
                   p + "mlp.3.weight": normal(h, m, std=0.05), p + "mlp.3.bias": normal(h)})
    return sd


def write_vit_b_32(path: str | os.PathLike[str], seed: int = 0) -> Path:
    """Write :func:`vit_b_32_state_dict` as torchvision ships it: ``torch.save`` of a state_dict.

    Needs torch.  The file (about 350 MB) stands in for torchvision's
    ``vit_b_32-d86f8d99.pth``, which cannot be downloaded here.
    """
    import torch

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: torch.from_numpy(v) for k, v in vit_b_32_state_dict(seed).items()}, target)
    return target


def eeg_head_arrays(subject: int, *, n_components: int = 8, seed: int = 0,
                    n_features: int = _EEG_FEATURES) -> dict[str, Any]:
    """Random but valid EEG encoder parameters of one subject, in BERG's pickled-dict form.

    ``{'scaler_param': {mean_, scale_, var_, n_samples_seen_}, 'pca_param': {components_
    (n_components, n_features), mean_, explained_variance_, n_components_}, 'reg_param':
    {'rep-1'..'rep-4': {coef_ (8820, n_components), intercept_ (8820,)}}}``.  The real files
    have 250 components; tests use a few, which keeps them small (8 components: 15 MB).

    Examples
    --------
    >>> w = eeg_head_arrays(1, n_components=3, n_features=10)
    >>> w["pca_param"]["components_"].shape, w["reg_param"]["rep-4"]["coef_"].shape
    ((3, 10), (8820, 3))
    """
    rng = _rng(seed, "eeg-head", subject)
    reg = {f"rep-{r}": {"coef_": rng.normal(0, 1, (63 * 140, n_components)),
                        "intercept_": rng.normal(0, 0.1, 63 * 140)} for r in range(1, 5)}
    return {**_scaler_pca(_rng(seed, "eeg-head-shared"), n_components, n_features, 16540),
            "reg_param": reg}


def _scaler_pca(rng: np.random.Generator, n_components: int, n_features: int,
                n_samples: int) -> dict[str, Any]:
    """BERG's ``scaler_param`` and ``pca_param`` blocks, random but valid."""
    scale = rng.uniform(0.5, 2.0, n_features)
    components = rng.standard_normal((n_components, n_features), dtype=np.float32)
    components /= np.sqrt(n_features, dtype=np.float32)
    variance = np.sort(rng.uniform(1, 10, n_components))[::-1]
    return {
        "scaler_param": {"mean_": rng.normal(0, 0.5, n_features), "scale_": scale,
                         "var_": scale**2, "n_features_in_": n_features,
                         "n_samples_seen_": n_samples},
        "pca_param": {"components_": components,
                      "mean_": rng.normal(0, 0.1, n_features).astype(np.float32),
                      "explained_variance_": variance,
                      "explained_variance_ratio_": variance / variance.sum() / 2,
                      "singular_values_": np.sqrt(variance * (n_samples - 1)),
                      "n_components_": n_components, "n_samples_": n_samples,
                      "noise_variance_": 0.5, "n_features_in_": n_features},
    }


def _eeg_model_folder(root: str | os.PathLike[str]) -> Path:
    return (Path(root) / "encoding_models" / "modality-eeg" / "train_dataset-things_eeg_2"
            / "model-vit_b_32")


def eeg_metadata_path(root: str | os.PathLike[str], subject: int) -> Path:
    """NEST's (BERG-era) metadata file of one subject's EEG encoder."""
    return _eeg_model_folder(root) / "metadata" / f"metadata_subject-{subject:02d}.npy"


def eeg_weight_paths(root: str | os.PathLike[str], subject: int, layout: str = "berg"
                     ) -> list[Path]:
    """The EEG weight files of one subject: BERG's one file, or NED's three.

    NED: the shared ``StandardScaler_param.npy`` and ``pca_param.npy`` and the subject's
    ``LinearRegression_param_sub-{SS}.npy``.
    """
    folder = _eeg_model_folder(root) / "encoding_models_weights"
    if layout == "berg":
        return [folder / f"weights_subject-{subject:02d}.npy"]
    if layout == "ned":
        return [folder / "StandardScaler_param.npy", folder / "pca_param.npy",
                folder / f"LinearRegression_param_sub-{subject:02d}.npy"]
    raise ValueError(f"layout must be 'berg' or 'ned', not {layout!r}")


def write_eeg_weights(
    root: str | os.PathLike[str], subject: int, *, layout: str = "berg",
    n_components: int = 8, seed: int = 0,
) -> list[Path]:
    """Write one subject's EEG encoder in NEST's original pickled ``.npy`` formats.

    ``layout="berg"`` writes ``weights_subject-{SS}.npy`` (a dict of :func:`eeg_head_arrays`);
    ``layout="ned"`` writes NED's shared ``StandardScaler_param.npy`` and ``pca_param.npy``
    (with twice as many PCA components as the regressions use, as NED kept 1,000 and used
    the first 250) and ``LinearRegression_param_sub-{SS}.npy`` (the ``rep-r`` blocks).  Both
    layouts also get ``metadata_subject-{SS}.npy``: ``eeg{ch_names, times}`` and
    ``encoding_models{correlation_averaged_repetitions, correlation_single_repetitions,
    train_img_info, test_img_info}``.  The backbone is not part of NEST: see
    :func:`write_vit_b_32`.

    Returns
    -------
    list of pathlib.Path
        The weight files written.

    Examples
    --------
    >>> import tempfile
    >>> [p.name for p in write_eeg_weights(tempfile.mkdtemp(), 2, layout="ned",
    ...                                    n_components=2)]
    ['StandardScaler_param.npy', 'pca_param.npy', 'LinearRegression_param_sub-02.npy']
    """
    arrays = eeg_head_arrays(subject, n_components=n_components, seed=seed)
    paths = eeg_weight_paths(root, subject, layout)
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    if layout == "berg":
        _save_pickle(paths[0], arrays)
    else:
        extra = eeg_head_arrays(subject, n_components=2 * n_components, seed=seed + 1)
        pca = dict(arrays["pca_param"])
        pca["components_"] = np.concatenate([pca["components_"],
                                             extra["pca_param"]["components_"][n_components:]])
        pca["n_components_"] = 2 * n_components
        _save_pickle(paths[0], arrays["scaler_param"])
        _save_pickle(paths[1], pca)
        _save_pickle(paths[2], arrays["reg_param"])
    ned = _eeg_metadata(seed, "things", subject, 1)
    accuracy = ned["encoding_models"]["encoding_accuracy"]
    meta = {"eeg": ned["eeg"], "encoding_models": {
        "correlation_averaged_repetitions": accuracy["correlation_all_repetitions"],
        "correlation_single_repetitions": accuracy["correlation_single_repetitions"],
        "train_img_info": ned["encoding_models"]["train_test_things_image_splits"],
        "test_img_info": {"test_img_files": ned["encoding_models"][
            "train_test_things_image_splits"]["test_img_files"]}}}
    meta_path = eeg_metadata_path(root, subject)
    meta_path.parent.mkdir(parents=True, exist_ok=True)
    _save_pickle(meta_path, meta)
    return paths


# ------------------------------------------------------------------------------ fsaverage

#: BERG's 31 fsaverage ROIs as NSD's label files name them (the model card says OVWFA for
#: NSD's OWFA), each at a (start, size) fraction of a hidden line along which the miniature
#: writer lays out ROIs: streams partition the first half, finer ROIs nest inside them.
FSAVERAGE_ROI_LAYOUT: dict[str, tuple[float, float]] = {
    "early": (0.00, 0.08), "midventral": (0.08, 0.03), "midlateral": (0.11, 0.03),
    "midparietal": (0.14, 0.03), "ventral": (0.17, 0.10), "lateral": (0.27, 0.10),
    "parietal": (0.37, 0.10),
    "V1v": (0.000, 0.012), "V1d": (0.012, 0.012), "V2v": (0.024, 0.011),
    "V2d": (0.035, 0.011), "V3v": (0.046, 0.010), "V3d": (0.056, 0.010), "hV4": (0.066, 0.008),
    "OFA": (0.280, 0.006), "FFA-1": (0.180, 0.008), "FFA-2": (0.190, 0.006),
    "mTL-faces": (0.200, 0.004), "aTL-faces": (0.205, 0.004),
    "EBA": (0.290, 0.020), "FBA-1": (0.185, 0.006), "FBA-2": (0.195, 0.005),
    "mTL-bodies": (0.210, 0.004),
    "OPA": (0.380, 0.012), "PPA": (0.220, 0.012), "RSC": (0.400, 0.008),
    "OWFA": (0.300, 0.004), "VWFA-1": (0.235, 0.006), "VWFA-2": (0.242, 0.005),
    "mfs-words": (0.248, 0.003), "mTL-words": (0.252, 0.003),
}


def _fsaverage_model_folder(root: str | os.PathLike[str]) -> Path:
    return (Path(root) / "encoding_models" / "modality-fmri" / "train_dataset-nsd_fsaverage"
            / "model-vit_b_32")


def fsaverage_paths(root: str | os.PathLike[str], subject: int) -> tuple[Path, Path]:
    """BERG's weights and metadata files of one subject's fsaverage encoder under ``root``."""
    folder = _fsaverage_model_folder(root)
    name = f"subject-{subject:02d}.npy"
    return (folder / "encoding_models_weights" / f"weights_{name}",
            folder / "metadata" / f"metadata_{name}")


def fsaverage_arrays(subject: int, *, n_components: int = 8,
                     n_vertices: int = 163842, seed: int = 0,
                     n_features: int = _EEG_FEATURES,
                     coordinates: Mapping[str, np.ndarray] | None = None,
                     ) -> tuple[dict[str, Any], dict[str, Any]]:
    """One subject's fsaverage encoder as BERG's two pickled dicts: weights and metadata.

    Weights: ``{scaler_param, pca_param, lh_reg_param{coef_ (n_vertices, n_components),
    intercept_, n_features_in_}, rh_reg_param{...}}`` with the keys and dtypes that BERG's
    ``train_encoding.py`` saves from scikit-learn.  Metadata: ``fmri{lh_ncsnr, rh_ncsnr,
    lh_fsaverage_rois, rh_fsaverage_rois}`` (ROI name -> ``np.where`` vertex indices, as
    BERG's ``prepare_nsd_fsaverage.py``) and ``encoding_models{train_img_num, val_img_num,
    test_img_num, {lh,rh}_{correlation, r2, noise_ceiling, explained_variance}}`` computed
    with BERG's arithmetic.  ROIs are scattered over the vertex indices as on the real
    icosahedral mesh; regression weights vary smoothly along the writer's hidden ROI line.
    ``coordinates`` (hemisphere -> ``(k, 3)`` positions of the first ``k`` vertices, e.g.
    the fsaverage5 mesh, whose vertices are fsaverage's first 10,242) lays that line out
    from posterior to anterior over those vertices, so maps drawn on the mesh are smooth.

    Examples
    --------
    >>> w, m = fsaverage_arrays(1, n_components=2, n_vertices=642, n_features=10)
    >>> w["lh_reg_param"]["coef_"].shape, len(m["fmri"]["rh_fsaverage_rois"])
    ((642, 2), 31)
    """
    rng = _rng(seed, "fsaverage", subject)
    weights = _scaler_pca(rng, n_components, n_features, 9000)
    fmri: dict[str, Any] = {}
    accuracy: dict[str, Any] = {}
    for hemi in ("lh", "rh"):
        hidden = rng.permutation(n_vertices)  # hidden line position -> vertex index
        if coordinates is not None and hemi in coordinates:
            k = min(len(coordinates[hemi]), n_vertices)
            placed = np.argsort(np.asarray(coordinates[hemi])[:k, 1], kind="stable")
            hidden = np.concatenate([placed, hidden[hidden >= k]])
        line = np.empty(n_vertices)
        line[hidden] = np.arange(n_vertices) / n_vertices
        freq = rng.uniform(1, 6, n_components)
        phase = rng.uniform(0, 2 * np.pi, n_components)
        coef = np.sin(2 * np.pi * line[:, None] * freq + phase)
        coef += 0.3 * rng.standard_normal((n_vertices, n_components))
        weights[f"{hemi}_reg_param"] = {
            "coef_": coef.astype(np.float32),
            "intercept_": (0.1 * rng.standard_normal(n_vertices)).astype(np.float32),
            "n_features_in_": n_components}
        rois = {}
        for name, (start, size) in FSAVERAGE_ROI_LAYOUT.items():
            a = int(start * n_vertices)
            rois[name] = np.sort(hidden[a:a + max(1, int(size * n_vertices))]).astype(np.int64)
        ncsnr = rng.gamma(2.0, 0.25, n_vertices).astype(np.float32)
        correlation = np.clip(rng.uniform(-0.1, 0.6, n_vertices), 0, None)
        r2 = correlation**2
        noise_ceiling = ncsnr.astype(np.float64)**2 / (ncsnr.astype(np.float64)**2 + 1 / 3)
        noise_ceiling[noise_ceiling == 0] = 1e-14
        fmri[f"{hemi}_ncsnr"] = ncsnr
        fmri[f"{hemi}_fsaverage_rois"] = rois
        accuracy.update({f"{hemi}_correlation": correlation, f"{hemi}_r2": r2,
                         f"{hemi}_noise_ceiling": noise_ceiling,
                         f"{hemi}_explained_variance": np.minimum(r2 / noise_ceiling * 100,
                                                                  100)})
    own = _nsd_design(seed)[0][subject - 1]
    metadata = {"fmri": {k: fmri[k] for k in ("lh_ncsnr", "rh_ncsnr", "lh_fsaverage_rois",
                                              "rh_fsaverage_rois")},
                "encoding_models": {"train_img_num": np.sort(own[1000:]),
                                    "val_img_num": np.sort(own[515:1000]),
                                    "test_img_num": np.sort(own[:515]), **accuracy}}
    return weights, metadata


def write_fsaverage_weights(
    root: str | os.PathLike[str], subject: int, *, n_components: int = 8,
    n_vertices: int = 163842, seed: int = 0,
    coordinates: Mapping[str, np.ndarray] | None = None,
) -> tuple[Path, Path]:
    """Write one subject's fsaverage encoder in BERG's files (see :func:`fsaverage_arrays`).

    ``encoding_models/modality-fmri/train_dataset-nsd_fsaverage/model-vit_b_32/`` +
    ``encoding_models_weights/weights_subject-{SS}.npy`` and ``metadata/metadata_subject-
    {SS}.npy``.  The real files have 250 components and 163,842 vertices per hemisphere; a
    few components keep the miniature small (8: 26 MB).  The backbone is
    :func:`write_vit_b_32`.

    Returns
    -------
    tuple of pathlib.Path
        The weights file and the metadata file.

    Examples
    --------
    >>> import tempfile
    >>> [p.name for p in write_fsaverage_weights(tempfile.mkdtemp(), 3, n_components=2,
    ...                                          n_vertices=642)]
    ['weights_subject-03.npy', 'metadata_subject-03.npy']
    """
    weights, metadata = fsaverage_arrays(subject, n_components=n_components,
                                         n_vertices=n_vertices, seed=seed,
                                         coordinates=coordinates)
    paths = fsaverage_paths(root, subject)
    for path, obj in zip(paths, (weights, metadata), strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        _save_pickle(path, obj)
    return paths
