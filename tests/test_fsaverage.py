"""BERG's fsaverage model end to end: BERG's files -> converter -> encode, generate, open, analyses.

The reference is BERG's own arithmetic run through scikit-learn, as BERG's
``nsd_fsaverage_vit_b_32.py`` does it: ``StandardScaler``, ``PCA`` and one
``LinearRegression`` per hemisphere with their fitted attributes set from the weights file,
``scaler.transform`` -> ``pca.transform`` (float64) -> ``astype(float32)`` -> ``predict``;
the ViT-B/32 features come from the NumPy reference of ``test_vit``.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
sklearn = pytest.importorskip("sklearn")

import nest_data  # noqa: E402
from nest_data._surface import N_FSAVERAGE_VERTICES  # noqa: E402
from nest_data.converters.weights import convert_fsaverage_weights, convert_weights  # noqa: E402
from nest_data.errors import InputError, SourceFormatError  # noqa: E402
from nest_data.synthetic import (  # noqa: E402
    VIT_B_32_FILE,
    fsaverage_arrays,
    fsaverage_paths,
    test_images,
    vit_b_32_state_dict,
    write_fsaverage_weights,
    write_image_folder,
    write_vit_b_32,
)

from .test_eeg import reference_preprocess  # noqa: E402
from .test_vit import reference_features  # noqa: E402

N_COMPONENTS = 8
N_VERTICES = 642  # per hemisphere: fsaverage's icosahedron of order 3
SURFACE = {"train_dataset": "nsd_fsaverage"}


def berg_reference(features: np.ndarray, weights: dict[str, Any]) -> np.ndarray:
    """BERG's ``generate_response`` arithmetic on features, both hemispheres concatenated."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LinearRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler()
    for name, value in weights["scaler_param"].items():
        setattr(scaler, name, value)
    pca = PCA(n_components=len(weights["pca_param"]["components_"]), random_state=20200220)
    for name, value in weights["pca_param"].items():
        setattr(pca, name, value)
    p = pca.transform(scaler.transform(features)).astype(np.float32)
    out = []
    for hemi in ("lh", "rh"):
        reg = LinearRegression()
        for name, value in weights[f"{hemi}_reg_param"].items():
            setattr(reg, name, value)
        out.append(reg.predict(p).astype(np.float32))
    return np.concatenate(out, axis=1)


@pytest.fixture(scope="module")
def fs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Converted weights of subjects 1 and 2 (subject 2's ROIs as boolean masks) + backbone."""
    src = tmp_path_factory.mktemp("berg-fsaverage")
    dest = tmp_path_factory.mktemp("converted-fsaverage")
    write_fsaverage_weights(src, 1, n_components=N_COMPONENTS, n_vertices=N_VERTICES)
    _, meta_path = write_fsaverage_weights(src, 2, n_components=N_COMPONENTS,
                                           n_vertices=N_VERTICES)
    meta = np.load(meta_path, allow_pickle=True).item()
    for hemi in ("lh", "rh"):
        rois = meta["fmri"][f"{hemi}_fsaverage_rois"]
        for name, index in rois.items():
            mask = np.zeros(N_VERTICES, dtype=bool)
            mask[index] = True
            rois[name] = mask
    np.save(meta_path, np.asarray(meta, dtype=object), allow_pickle=True)
    pth = write_vit_b_32(src / VIT_B_32_FILE)
    written = convert_weights(src, dest, vit_b_32=pth)
    assert written == [
        "weights/backbones/vit_b_32-imagenet1k_v1",
        "weights/modality-fmri/train_dataset-nsd_fsaverage/model-vit_b_32/sub-01",
        "weights/modality-fmri/train_dataset-nsd_fsaverage/model-vit_b_32/sub-02"]
    pth.unlink()
    return dest


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return test_images(3, 256, seed=7)


@pytest.fixture(scope="module")
def expected(images: np.ndarray) -> dict[int, np.ndarray]:
    sd = {k: v.astype(np.float64) for k, v in vit_b_32_state_dict().items()}
    features = reference_features(reference_preprocess(images), sd)
    return {s: berg_reference(features, fsaverage_arrays(
        s, n_components=N_COMPONENTS, n_vertices=N_VERTICES)[0]) for s in (1, 2)}


def test_encode_matches_bergs_arithmetic_without_pickles(
    fs_root: Path, images: np.ndarray, expected: dict[int, np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a pickle was loaded while encoding")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)
    for subject in (1, 2):
        da = nest_data.encode(images, subject=subject, location=str(fs_root), cache=False,
                              batch_size=2, **SURFACE)
        assert da.dims == ("image", "vertex") and da.shape == (3, 2 * N_VERTICES)
        assert da.attrs["roi"] == "whole surface" and da.attrs["n_vertices"] == {
            "lh": N_VERTICES, "rh": N_VERTICES}
        error = np.abs(da.values - expected[subject]).max()
        spread = expected[subject].std(axis=0).mean()
        assert spread > 0.5 and error / spread < 1e-3, (error, spread)
    assert list(da.hemisphere.values[[0, -1]]) == ["lh", "rh"]
    assert da.fsaverage_index.values[N_VERTICES] == 0
    _, meta = fsaverage_arrays(1, n_components=N_COMPONENTS, n_vertices=N_VERTICES)
    one = nest_data.encode(images, subject=1, location=str(fs_root), **SURFACE)
    np.testing.assert_allclose(one.ncsnr.values,
                               np.concatenate([meta["fmri"]["lh_ncsnr"],
                                               meta["fmri"]["rh_ncsnr"]]))
    np.testing.assert_allclose(one.explained_variance.values[:N_VERTICES],
                               meta["encoding_models"]["lh_explained_variance"], rtol=1e-6)


def test_roi_and_one_hot_vertex_selection(fs_root: Path, images: np.ndarray,
                                          expected: dict[int, np.ndarray]) -> None:
    _, meta = fsaverage_arrays(2, n_components=N_COMPONENTS, n_vertices=N_VERTICES)
    lh, rh = (meta["fmri"][f"{h}_fsaverage_rois"]["FFA-1"] for h in ("lh", "rh"))
    ffa = nest_data.encode(images, subject=2, roi="FFA-1", location=str(fs_root), **SURFACE)
    assert ffa.attrs["roi"] == "FFA-1" and ffa.sizes["vertex"] == len(lh) + len(rh)
    np.testing.assert_array_equal(ffa.fsaverage_index.values, np.concatenate([lh, rh]))
    columns = np.concatenate([lh, rh + N_VERTICES])
    np.testing.assert_allclose(ffa.values, expected[2][:, columns], rtol=1e-3, atol=1e-3)
    # An ROI only the surface model has picks it without train_dataset=.
    v1v = nest_data.encode(images[:1], subject=2, roi="V1v", location=str(fs_root))
    assert v1v.attrs["train_dataset"] == "nsd_fsaverage"
    # BERG's one-hot selection; a hemisphere without a vector keeps all its vertices.
    one_hot = np.zeros(N_VERTICES, dtype=np.int64)
    one_hot[[3, 10]] = 1
    sel = nest_data.encode(images[:1], subject=2, lh_vertices=one_hot, location=str(fs_root),
                           **SURFACE)
    assert sel.sizes["vertex"] == 2 + N_VERTICES
    np.testing.assert_array_equal(sel.vertex.values[:2], [3, 10])
    only = nest_data.encode(images[:1], subject=2, lh_vertices=[4], rh_vertices=[0, 5],
                            location=str(fs_root), **SURFACE)
    np.testing.assert_array_equal(only.vertex.values, [4, N_VERTICES, N_VERTICES + 5])
    with pytest.raises(InputError, match="give roi= or lh_vertices=/rh_vertices=, not both"):
        nest_data.encode(images[:1], subject=2, roi="FFA-1", lh_vertices=one_hot,
                         location=str(fs_root), **SURFACE)
    with pytest.raises(InputError, match=r"lh_vertices= as a one-hot vector needs 642 values"):
        nest_data.encode(images[:1], subject=2, lh_vertices=np.zeros(N_VERTICES, bool),
                         location=str(fs_root), **SURFACE)
    with pytest.raises(InputError, match=r"rh_vertices= indices must lie in 0\.\.641"):
        nest_data.encode(images[:1], subject=2, rh_vertices=[642], location=str(fs_root),
                         **SURFACE)
    with pytest.raises(InputError, match="lh_vertices= and rh_vertices= select fsaverage"):
        nest_data.encode(images[:1], subject=1, roi="V1", lh_vertices=[1],
                         location=str(fs_root))


@pytest.fixture(scope="module")
def generated(fs_root: Path, images: np.ndarray, tmp_path_factory: pytest.TempPathFactory
              ) -> Path:
    """Whole-surface stores of subjects 1 and 2 on 'things' (the fixture's images)."""
    folder = tmp_path_factory.mktemp("fs-images")
    write_image_folder(folder, np.concatenate([images, images[::-1]]))
    for subject in (1, 2):
        nest_data.generate(folder, fs_root, imageset="things", subject=subject,
                           location=str(fs_root), chunk_images=4, chunk_vertices=128,
                           **SURFACE)
    return fs_root


def test_generated_store_layout_and_roi_open(generated: Path, images: np.ndarray,
                                            tmp_path: Path) -> None:
    whole = nest_data.open(imageset="things", subject=1, location=str(generated), **SURFACE)
    assert whole.dims == ("image", "vertex") and whole.shape == (6, 2 * N_VERTICES)
    assert whole.data.chunksize == (4, 128)  # chunked along image and vertex
    assert not np.array_equal(whole.vertex.values, np.sort(whole.vertex.values))  # ROI order
    encoded = nest_data.encode(images, subject=1, location=str(generated), **SURFACE)
    np.testing.assert_allclose(whole.sortby("vertex").values[:3], encoded.values,
                               rtol=1e-4, atol=1e-4)
    ffa = nest_data.open(imageset="things", subject=1, roi="FFA-1", location=str(generated),
                         **SURFACE)
    enc_ffa = nest_data.encode(images, subject=1, roi="FFA-1", location=str(generated),
                               **SURFACE)
    np.testing.assert_array_equal(ffa.vertex.values, enc_ffa.vertex.values)  # BERG's order
    np.testing.assert_allclose(ffa.values[:3], enc_ffa.values, rtol=1e-4, atol=1e-4)
    assert ffa.attrs["roi"] == "FFA-1"
    touched = set(np.unique(_positions(generated, 1, "FFA-1") // 128).tolist())
    assert len(touched) <= 2 < whole.data.numblocks[1]
    same = nest_data.open(imageset="things", subject=1, roi="V1v", location=str(generated))
    assert same.attrs["train_dataset"] == "nsd_fsaverage"
    with pytest.raises(InputError, match="generate writes the whole surface"):
        write_image_folder(tmp_path, images[:1])
        nest_data.generate(tmp_path, generated, imageset="x", subject=1, roi="FFA-1",
                           location=str(generated), **SURFACE)


def _positions(root: Path, subject: int, roi: str, imageset: str = "things") -> np.ndarray:
    import zarr

    store = (root / "modality-fmri/train_dataset-nsd_fsaverage/model-vit_b_32"
             / f"imageset-{imageset}/sub-{subject:02d}.zarr")
    return np.asarray(zarr.open_array(store, path=f"encoder/roi-{roi}", mode="r")[...])


def test_analyses_accept_surface_entries(generated: Path) -> None:
    tree = nest_data.open_many(imageset="things", subject=[1, 2], roi=["FFA-1", "PPA"],
                               location=str(generated), **SURFACE)
    ffa = tree["sub-01/FFA-1"].responses
    mean = nest_data.roi_mean(ffa, min_ncsnr=0.2)
    keep = ffa.ncsnr.values > 0.2
    np.testing.assert_allclose(mean.values, ffa.values[:, keep].mean(axis=1), rtol=1e-6)
    means = nest_data.roi_means(tree)
    assert means.sizes == {"subject": 2, "roi": 2, "image": 6}
    top = nest_data.top_images(ffa, k=2)
    assert top.values[0] == pytest.approx(float(ffa.mean("vertex").max()), rel=1e-6)
    r = nest_data.rsm(ffa, [0, 1, 5]).values
    np.testing.assert_allclose(r[0, 2], np.corrcoef(ffa.values[[0, 5]])[0, 1], rtol=1e-6)
    assert r[0, 2] == pytest.approx(1.0)  # image 5 is image 0 again
    rnc = nest_data.univariate_rnc(tree, rois=("FFA-1", "PPA"), n_images=1, n_batches=20,
                                   batch_size=2, seed=0)
    assert rnc.roi.values.tolist() == ["FFA-1", "PPA"]
    # The null distribution is the mean of random batches of the subject-averaged ROI means.
    from nest_data.analysis import random_batches

    batches = random_batches(6, 2, 20, seed=0)
    scores = nest_data.roi_means(tree, min_ncsnr=0.5).mean("subject").values  # RNC default
    np.testing.assert_allclose(rnc.null_distribution.values, scores[:, batches].mean(axis=2),
                               rtol=1e-5, atol=1e-6)


def test_full_size_surface_reads_a_few_chunks_for_one_roi(fs_root: Path, tmp_path: Path
                                                          ) -> None:
    """163,842 vertices per hemisphere: one ROI reads a small fraction of the store's bytes."""
    src, dest = tmp_path / "berg", tmp_path / "root"
    write_fsaverage_weights(src, 3, n_components=2)
    convert_fsaverage_weights(src, dest)
    folder = tmp_path / "images"
    write_image_folder(folder, test_images(2, 64))
    url = nest_data.generate(folder, dest, imageset="nsd", subject=3, location=str(dest),
                             backbone=str(fs_root / "weights/backbones/vit_b_32-imagenet1k_v1"),
                             **SURFACE)
    whole = nest_data.open_store(url)
    assert whole.shape == (2, 2 * N_FSAVERAGE_VERTICES)
    n_roi = nest_data.open_store(url, roi="FFA-1").sizes["vertex"]
    assert n_roi == 2 * int(0.008 * N_FSAVERAGE_VERTICES)
    chunks = sorted(Path(url, "responses", "c").rglob("*"))
    sizes = {c.relative_to(Path(url, "responses", "c")).as_posix(): c.stat().st_size
             for c in chunks if c.is_file()}
    read = {f"0/{j}" for j in np.unique(_positions(dest, 3, "FFA-1", "nsd") // 4096)}
    fraction = sum(sizes[k] for k in read) / sum(sizes.values())
    assert len(sizes) == 81 and len(read) <= 3 and fraction < 0.05, (len(read), fraction)
    # In vertex-index order, the same ROI would touch nearly every chunk.
    _, meta = fsaverage_arrays(3, n_components=2)
    lh = meta["fmri"]["lh_fsaverage_rois"]["FFA-1"]
    assert len(np.unique(lh // 4096)) > 30


def test_converter_checks_berg_files(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    weights_path, meta_path = write_fsaverage_weights(tmp_path / "a", 1, n_components=2,
                                                      n_vertices=N_VERTICES)
    meta = np.load(meta_path, allow_pickle=True).item()
    meta["fmri"]["rh_ncsnr"] = meta["fmri"]["rh_ncsnr"][:-1]
    np.save(meta_path, np.asarray(meta, dtype=object), allow_pickle=True)
    with pytest.raises(SourceFormatError, match=r"rh_ncsnr has shape \(641,\); the rh "
                                                "regression predicts 642 vertices"):
        convert_fsaverage_weights(tmp_path / "a", tmp_path / "out")
    meta["fmri"]["rh_ncsnr"] = np.ones(N_VERTICES, np.float32)
    meta["fmri"]["lh_fsaverage_rois"]["PPA"] = np.array([0, 700])
    np.save(meta_path, np.asarray(meta, dtype=object), allow_pickle=True)
    with pytest.raises(SourceFormatError, match=r"lh_fsaverage_rois\['PPA'\] indices must "
                                                r"lie in 0\.\.641; got 2 values from 0 to "
                                                r"700; the metadata does not match"):
        convert_fsaverage_weights(tmp_path / "a", tmp_path / "out")
    # Without metadata: the whole surface converts, ROIs are unavailable (logged).
    meta_path.unlink()
    with caplog.at_level(logging.WARNING, logger="nest_data"):
        (rel,) = convert_fsaverage_weights(tmp_path / "a", tmp_path / "out")
    assert "no metadata file" in caplog.text
    doc = (tmp_path / "out" / rel / "model.json").read_text()
    assert '"rois": []' in doc
    weights = np.load(weights_path, allow_pickle=True).item()
    weights["rh_reg_param"]["coef_"] = weights["rh_reg_param"]["coef_"][:, :1]
    np.save(weights_path, np.asarray(weights, dtype=object), allow_pickle=True)
    with pytest.raises(SourceFormatError, match=r"rh_reg_param has coef_ \(642, 1\)"):
        convert_fsaverage_weights(tmp_path / "a", tmp_path / "out2")


def test_owfa_is_catalogs_ovwfa(fs_root: Path) -> None:
    doc = (fs_root / "weights/modality-fmri/train_dataset-nsd_fsaverage/model-vit_b_32/sub-01"
           / "model.json").read_text()
    assert '"OVWFA": "OWFA"' in doc  # NSD's label files say OWFA, BERG's card OVWFA
    assert nest_data.catalog().resolve(imageset="nsd", subject=1, roi="OVWFA").model == (
        "vit_b_32")
    assert fsaverage_paths(fs_root, 1)[0].name == "weights_subject-01.npy"


def test_convert_weights_reads_berg_bucket_anonymously(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """``nest-data convert weights s3://... --source-option anon=true`` on BERG's layout."""
    pytest.importorskip("s3fs")
    from nest_data._cli import main as cli
    from nest_data.synthetic import write_eeg_weights, write_fwrf_weights

    from .servers import S3Server

    src = tmp_path / "berg"
    write_fsaverage_weights(src, 1, n_components=2, n_vertices=N_VERTICES)
    write_fsaverage_weights(src, 2, n_components=2, n_vertices=N_VERTICES)
    write_eeg_weights(src, 4, n_components=2)
    write_fwrf_weights(src, 2, "V1", n_voxels=4)
    (src / "encoding_models" / "modality-fmri" / "train_dataset-nsd_fsaverage"
     / "model-vit_b_32" / "encoding_models_accuracy").mkdir()
    (src / "encoding_models" / "modality-fmri" / "train_dataset-nsd_fsaverage"
     / "model-vit_b_32" / "encoding_models_accuracy" / "r2_subject-01.png").write_bytes(b"png")
    with S3Server() as server:
        server.upload(src, "berg")
        server.make_public()
        url = server.url + "/berg"
        options = ["--source-option", "anon=true",
                   "--source-option", f"endpoint_url={server.endpoint}",
                   "--source-option", 'client_kwargs={"region_name": "us-east-1"}']
        dest = tmp_path / "out"
        assert cli(["--no-progress", "convert", "weights", url, str(dest), "--subject", "2",
                    "4", *options]) == 0
        paths = capsys.readouterr().out.split()
        assert sorted(Path(p).relative_to(dest).as_posix() for p in paths) == [
            "weights/modality-eeg/train_dataset-things_eeg_2/model-vit_b_32/sub-04",
            "weights/modality-fmri/train_dataset-nsd_fsaverage/model-vit_b_32/sub-02"]
        assert not (dest / "weights/modality-fmri/train_dataset-nsd_fsaverage/model-vit_b_32"
                    / "sub-01").exists()  # not asked for; the fwRF pickle is skipped too
        assert cli(["--no-progress", "convert", "weights", url, str(dest), "--subject", "2",
                    "--modality", "fmri", "--roi", "V1", "--trust-pickles", *options]) == 0
        assert "weights/modality-fmri/train_dataset-nsd/model-fwrf/sub-02_roi-V1" in (
            capsys.readouterr().out)
        local = convert_fsaverage_weights(src, tmp_path / "local", subject=2)
        remote_doc = (dest / local[0] / "model.json").read_text()
        local_doc = (tmp_path / "local" / local[0] / "model.json").read_text()
        assert _without_created(remote_doc) == _without_created(local_doc)
        with pytest.raises(nest_data.NestDataError, match="no encoder weights under .* for "
                                                          r"subjects \[9\]"):
            convert_weights(url, tmp_path / "none", subject=9,
                            source_options={"anon": True, "endpoint_url": server.endpoint,
                                            "client_kwargs": {"region_name": "us-east-1"}})


def _without_created(doc: str) -> dict[str, Any]:
    import json

    out = json.loads(doc)
    out.pop("created")
    return out


def test_cli_generate_and_stores_without_rois(fs_root: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from nest_data._cli import main as cli

    src, root = tmp_path / "berg", tmp_path / "root"
    _, meta_path = write_fsaverage_weights(src, 4, n_components=2, n_vertices=N_VERTICES)
    meta_path.unlink()  # weights without BERG's metadata: no ROIs, no vertex labels
    convert_fsaverage_weights(src, root)
    folder = tmp_path / "images"
    write_image_folder(folder, test_images(3, 64))
    backbone = fs_root / "weights/backbones/vit_b_32-imagenet1k_v1"
    assert cli(["--no-progress", "generate", str(folder), str(root), "--imageset", "mine",
                "--subject", "4", "--train-dataset", "nsd_fsaverage", "--location", str(root),
                "--backbone", str(backbone), "--chunk-vertices", "256"]) == 0
    url = capsys.readouterr().out.strip()
    whole = nest_data.open_store(url)
    assert whole.data.chunksize == (3, 256) and "ncsnr" not in whole.coords
    np.testing.assert_array_equal(whole.vertex.values, np.arange(2 * N_VERTICES))
    with pytest.raises(InputError, match=r"has no vertex selection for ROI 'FFA-1' \(its "
                                         "encoder's metadata had none\\); ROIs in it: none"):
        nest_data.open_store(url, roi="FFA-1")
    with pytest.raises(InputError, match="ROI 'FFA-1' has no vertex selection in these "
                                         "weights"):
        nest_data.encode(test_images(1, 64), subject=4, roi="FFA-1", location=str(root),
                         backbone=str(backbone), **SURFACE)


def test_roi_on_a_voxel_store_is_refused(demo: Path) -> None:
    url = demo / nest_data.catalog().resolve(imageset="things", subject=1, roi="V1").path
    with pytest.raises(InputError, match="is not a surface store .* open it without roi="):
        nest_data.open_store(url, roi="V1")
