"""Analyses: lazy graphs, values against plain numpy/scipy on NED's own files, on a cluster.

Every value test runs on a ``dask.distributed`` LocalCluster of 2 worker processes and
compares with numpy (or scipy) applied to the original NED files the stores were converted
from (read with h5py), so the reference shares no code with nest-data's reading path.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dask
import dask.array
import h5py
import matplotlib.image
import numpy as np
import pytest
import scipy.stats
import xarray as xr
from distributed import Client, LocalCluster, get_task_stream

import nest_data
from nest_data.analysis import random_batches, rnc
from nest_data.analysis.similarity import _average_ranks
from nest_data.errors import NestDataError
from nest_data.synthetic import ned_file_paths, write_ned

SUBJECTS = [1, 2]
ROIS = ["V1", "FFA-1", "lateral"]
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    """A LocalCluster of 2 worker processes (loopback only), the default scheduler here."""
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=":0") as cluster, Client(cluster) as c:
        yield c


def ned(ned_src: Path, imageset: str, subject: int, roi: str) -> tuple[np.ndarray, np.ndarray]:
    """Responses and ncsnr of one entry, read from NED's original files with h5py/numpy."""
    h5, npy = ned_file_paths(ned_src, "fmri", imageset, subject, roi)
    with h5py.File(h5, "r") as f:
        values = f["synthetic_neural_responses"][:]
    return values, np.load(npy, allow_pickle=True).item()["fmri"]["ncsnr"]


def ned_score(ned_src: Path, imageset: str, subject: int, roi: str,
              min_ncsnr: float | None = 0.5) -> np.ndarray:
    values, ncsnr = ned(ned_src, imageset, subject, roi)
    keep = ncsnr > min_ncsnr if min_ncsnr is not None else np.ones(ncsnr.size, bool)
    return np.nanmean(values[:, keep], axis=1)


def open_tree(collection: Path, imageset: str = "things", rois: list[str] = ROIS,
              subjects: list[int] = SUBJECTS) -> xr.DataTree:
    return nest_data.open_many(imageset=imageset, subject=subjects, roi=rois,
                               location=str(collection))


def _forbidden(*args: object, **kwargs: object) -> None:
    raise AssertionError("an analysis computed while it should only build a graph")


# ------------------------------------------------------------------------- laziness


def test_analyses_build_graphs_without_computing(collection: Path) -> None:
    tree = open_tree(collection)
    da = tree["sub-01/V1"]["responses"]
    with dask.config.set(scheduler=_forbidden):
        results = [
            nest_data.roi_mean(da, min_ncsnr=0.5),
            nest_data.roi_means(tree, min_ncsnr=0.5),
            nest_data.rsm(da, images=[4, 2, 9], min_ncsnr=0.5),
            nest_data.rsa(nest_data.rsm(da, range(6)), nest_data.rsm(da, range(6))),
            nest_data.rsa_matrix(tree, images=range(8)),
        ]
    for result in results:
        assert isinstance(result.data, dask.array.Array)
    assert results[1].sizes == {"subject": 2, "roi": 3, "image": 30}
    assert results[2].shape == (3, 3) and results[4].shape == (6, 6)


# ------------------------------------------------------------------------- ROI means


def test_roi_means_match_numpy_on_cluster(client: Client, collection: Path,
                                          ned_src: Path) -> None:
    tree = open_tree(collection)
    lazy = nest_data.roi_means(tree, min_ncsnr=0.5)
    with get_task_stream(client) as stream:
        got = lazy.compute()
    assert len(stream.data) > 0  # the work ran on the cluster's workers
    assert got.dims == ("subject", "roi", "image")
    assert got.subject.values.tolist() == SUBJECTS and got.roi.values.tolist() == ROIS
    for s in SUBJECTS:
        for r in ROIS:
            np.testing.assert_allclose(got.sel(subject=s, roi=r).values,
                                       ned_score(ned_src, "things", s, r), rtol=1e-5,
                                       atol=1e-6)
            _, ncsnr = ned(ned_src, "things", s, r)
            assert int(got.n_voxels.sel(subject=s, roi=r)) == int((ncsnr > 0.5).sum())
    # Cross-subject average with different voxel counts: the mean of the subjects' means,
    # not the mean over the pooled voxels.
    assert got.n_voxels.sel(roi="V1", subject=1) != got.n_voxels.sel(roi="V1", subject=2)
    per_subject = [ned_score(ned_src, "things", s, "V1") for s in SUBJECTS]
    np.testing.assert_allclose(got.mean("subject").sel(roi="V1").values,
                               np.mean(per_subject, axis=0), rtol=1e-5, atol=1e-6)
    pooled = np.concatenate([ned(ned_src, "things", s, "V1")[0][:, ned(
        ned_src, "things", s, "V1")[1] > 0.5] for s in SUBJECTS], axis=1).mean(axis=1)
    assert not np.allclose(got.mean("subject").sel(roi="V1").values, pooled, rtol=1e-4)
    # Image labels equal in every subject are kept; nsd's per-subject split is not.
    assert got.concept.dims == ("image",)
    nsd = nest_data.roi_means(open_tree(collection, "nsd", ["V1"]))
    assert "nsd_id" in nsd.coords and "split" not in nsd.coords


def test_top_images_of_entry_subject_average_and_scores(client: Client, collection: Path,
                                                        ned_src: Path) -> None:
    tree = open_tree(collection, rois=["FFA-1"])
    expected = np.mean([ned_score(ned_src, "things", s, "FFA-1") for s in SUBJECTS], axis=0)
    top = nest_data.top_images(tree, k=4, min_ncsnr=0.5)
    np.testing.assert_array_equal(top.image.values, np.argsort(-expected, kind="stable")[:4])
    np.testing.assert_allclose(top.values, np.sort(expected)[::-1][:4], rtol=1e-5)
    assert "concept" in top.coords
    bottom = nest_data.top_images(tree, k=3, min_ncsnr=0.5, largest=False)
    np.testing.assert_array_equal(bottom.image.values, np.argsort(expected, kind="stable")[:3])
    one = nest_data.top_images(tree["sub-02/FFA-1"]["responses"], k=30)
    np.testing.assert_array_equal(
        one.image.values,
        np.argsort(-ned_score(ned_src, "things", 2, "FFA-1", None), kind="stable"))
    scores = nest_data.roi_means(tree, min_ncsnr=0.5).mean("subject").sel(roi="FFA-1")
    xr.testing.assert_allclose(nest_data.top_images(scores, k=4), top)
    assert nest_data.top_images(scores, k=100).sizes["image"] == 30


# ------------------------------------------------------------------------- RNC


def rnc_reference(s1: np.ndarray, s2: np.ndarray, baseline: np.ndarray, n: int,
                  margin: float, standardize: bool) -> dict[str, np.ndarray]:
    """RNC's selection written out plainly: rank the sum/difference, drop those that fail."""
    d1, d2 = s1 - baseline[0], s2 - baseline[1]
    if standardize:
        d1, d2 = d1 / s1.std(), d2 / s2.std()
    out = {}
    for name, key, ok in (
        ("up_up", d1 + d2, (s1 >= baseline[0] + margin) & (s2 >= baseline[1] + margin)),
        ("down_down", -(d1 + d2), (s1 <= baseline[0] - margin) & (s2 <= baseline[1] - margin)),
        ("up_down", d1 - d2, (s1 >= baseline[0] + margin) & (s2 <= baseline[1] - margin)),
        ("down_up", d2 - d1, (s1 <= baseline[0] - margin) & (s2 >= baseline[1] + margin)),
    ):
        ranked = [i for i in np.argsort(-key, kind="stable") if ok[i]]
        out[name] = np.array(ranked[:n], dtype=np.int64)
    return out


@pytest.mark.parametrize("standardize", [False, True])
def test_univariate_rnc_matches_numpy(client: Client, collection: Path, ned_src: Path,
                                      standardize: bool) -> None:
    tree = open_tree(collection, "nsd", ["V1", "FFA-1", "lateral"])
    res = nest_data.univariate_rnc(tree, rois=("FFA-1", "V1"), n_images=4, margin=0.05,
                                   n_batches=3000, batch_size=5, seed=7,
                                   standardize=standardize)
    s1, s2 = (np.mean([ned_score(ned_src, "nsd", s, roi) for s in SUBJECTS], axis=0)
              for roi in ("FFA-1", "V1"))
    assert res.roi.values.tolist() == ["FFA-1", "V1"]
    assert res.attrs["subjects"] == SUBJECTS and res.attrs["seed"] == 7
    # Baseline: the null distribution is the batch means; the baseline is the score of the
    # batch closest to its mean, and the images of that batch are returned.
    batches = random_batches(30, 5, 3000, seed=7)
    for r, scores in enumerate((s1, s2)):
        null = scores[batches].mean(axis=1)
        np.testing.assert_allclose(res.null_distribution.values[r], null, atol=1e-5)
        np.testing.assert_allclose(float(res.null_mean[r]), null.mean(), atol=1e-5)
        best = np.abs(null - null.mean()).argmin()
        np.testing.assert_array_equal(res.baseline_images.values[r], batches[best])
        np.testing.assert_allclose(float(res.baseline[r]), scores[batches[best]].mean(),
                                   atol=1e-5)
    expected = rnc_reference(s1, s2, res.baseline.values, 4, 0.05, standardize)
    assert sum(v.size for v in expected.values()) > 4  # the check below is not vacuous
    for condition, images in expected.items():
        sel = res.sel(image=res.condition == condition)
        np.testing.assert_array_equal(sel.image.values, images)
        np.testing.assert_array_equal(sel.selection_rank.values, np.arange(1, images.size + 1))
        np.testing.assert_allclose(sel.score.values, np.stack([s1[images], s2[images]]),
                                   rtol=1e-5)
        control = "align" if condition in ("up_up", "down_down") else "disentangle"
        assert set(sel.control.values.tolist()) <= {control}
    assert "nsd_id" in res.coords and res.nsd_id.dims == ("image",)
    # The same result from precomputed scores (what the README's scatter plot reuses).
    means = nest_data.roi_means(tree, min_ncsnr=0.5)
    again = nest_data.univariate_rnc(means, rois=("FFA-1", "V1"), n_images=4, margin=0.05,
                                     n_batches=3000, batch_size=5, seed=7,
                                     standardize=standardize)
    np.testing.assert_array_equal(again.image.values, res.image.values)
    np.testing.assert_allclose(again.baseline.values, res.baseline.values)


def test_random_batches_are_distinct_uniform_and_seeded() -> None:
    for n, size in ((73000, 25), (20, 15)):  # rejection path and permutation path
        b = random_batches(n, size, 4000, seed=3)
        assert b.shape == (4000, size) and b.min() >= 0 and b.max() < n
        assert (np.diff(b, axis=1) > 0).all()  # sorted, no repeats
        np.testing.assert_array_equal(b, random_batches(n, size, 4000, seed=3))
        assert not np.array_equal(b, random_batches(n, size, 4000, seed=4))
    counts = np.bincount(random_batches(20, 15, 4000, seed=3).ravel(), minlength=20)
    assert np.abs(counts / (4000 * 15 / 20) - 1).max() < 0.05


def test_null_distribution_in_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rnc, "_BATCH_BLOCK", 64)  # 1000 batches in 16 blocks
    values = np.random.default_rng(0).standard_normal((2, 500))
    null, chosen = rnc._null_distribution(values, 10, 1000, seed=5)
    batches = random_batches(500, 10, 1000, seed=5)
    assert batches.shape == (1000, 10)
    expected = np.stack([v[batches].mean(axis=1) for v in values])
    np.testing.assert_allclose(null, expected, rtol=1e-12)
    best = np.abs(expected - expected.mean(axis=1, keepdims=True)).argmin(axis=1)
    np.testing.assert_array_equal(chosen, batches[best])


# ------------------------------------------------------------------------- RSM / RSA


def test_rsm_matches_pairwise_pearsonr(client: Client, collection: Path,
                                       ned_src: Path) -> None:
    da = nest_data.open(imageset="things", subject=2, roi="lateral", location=str(collection))
    images = [17, 3, 25, 8, 0, 29, 12]
    got = nest_data.rsm(da, images, min_ncsnr=0.5).compute()
    values, ncsnr = ned(ned_src, "things", 2, "lateral")
    x = values[images][:, ncsnr > 0.5].astype(np.float64)
    expected = np.array([[scipy.stats.pearsonr(a, b).statistic for b in x] for a in x])
    np.testing.assert_allclose(got.values, expected, atol=1e-10)
    assert got.dims == ("image", "image_2") and got.image.values.tolist() == images
    np.testing.assert_array_equal(got.concept_2.values, da.concept.values[images])
    mask = np.zeros(30, bool)
    mask[images] = True
    by_mask = nest_data.rsm(da, xr.DataArray(mask, dims="image"), min_ncsnr=0.5).compute()
    order = np.sort(images)
    np.testing.assert_allclose(by_mask.values, got.sel(image=order, image_2=order).values,
                               atol=1e-12)
    np.testing.assert_allclose(nest_data.rsm(da, slice(0, 4)).values,
                               np.corrcoef(values[:4]), atol=1e-10)


def test_rsm_of_eeg_uses_every_feature(client: Client, collection: Path) -> None:
    eeg = nest_data.open(modality="eeg", imageset="things", subject=1,
                         location=str(collection))
    got = nest_data.rsm(eeg, images=range(5)).values
    np.testing.assert_allclose(got, np.corrcoef(eeg.values[:5].reshape(5, -1)), atol=1e-10)


@pytest.mark.parametrize("method", ["spearman", "pearson"])
def test_rsa_and_rsa_matrix_match_scipy(client: Client, collection: Path, ned_src: Path,
                                        method: str) -> None:
    tree = open_tree(collection, rois=["V1", "FFA-1"])
    images = np.arange(2, 26, 2)
    iu = np.triu_indices(images.size, k=1)
    corr = scipy.stats.spearmanr if method == "spearman" else scipy.stats.pearsonr
    vectors = {}
    for s in SUBJECTS:
        for r in ("V1", "FFA-1"):
            values, ncsnr = ned(ned_src, "things", s, r)
            vectors[f"sub-{s:02d}/{r}"] = np.corrcoef(values[images][:, ncsnr > 0.5])[iu]
    a, b = tree["sub-01/V1"]["responses"], tree["sub-02/FFA-1"]["responses"]
    one = nest_data.rsa(nest_data.rsm(a, images, min_ncsnr=0.5),
                        nest_data.rsm(b, images, min_ncsnr=0.5), method=method)
    assert one.dims == () and isinstance(one.data, dask.array.Array)
    expected = corr(vectors["sub-01/V1"], vectors["sub-02/FFA-1"]).statistic
    np.testing.assert_allclose(float(one), expected, rtol=1e-9)
    matrix = nest_data.rsa_matrix(tree, images, min_ncsnr=0.5,
                                  method=method).compute()
    names = matrix.entry.values.tolist()
    assert names == ["sub-01/V1", "sub-01/FFA-1", "sub-02/V1", "sub-02/FFA-1"]
    assert matrix.roi.values.tolist() == ["V1", "FFA-1"] * 2
    for i, x in enumerate(names):
        for j, y in enumerate(names):
            np.testing.assert_allclose(matrix.values[i, j],
                                       corr(vectors[x], vectors[y]).statistic, rtol=1e-9)


def test_average_ranks_match_scipy_with_ties() -> None:
    rows = np.array([[3.0, 1.0, 3.0, 2.0, 3.0, 0.5], [1, 1, 1, 1, 1, 1], [2, np.nan, 1, 0, 4, 3]])
    got = _average_ranks(rows)
    np.testing.assert_array_equal(got[:2], scipy.stats.rankdata(rows[:2], axis=1))
    assert np.isnan(got[2]).all()


# ------------------------------------------------------------------------- progress


def test_progress_bars_can_be_turned_off(client: Client, collection: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    da = nest_data.open(imageset="things", subject=1, roi="V1", location=str(collection))
    nest_data.top_images(da, k=2, show_progress=True)  # the cluster's default client
    assert "top_images: 100%" in capsys.readouterr().err
    with dask.config.set(scheduler="threads"):
        nest_data.top_images(da, k=2, show_progress=True)
        assert "top_images: 100%" in capsys.readouterr().err
        nest_data.top_images(da, k=2, show_progress=False)
    nest_data.top_images(da, k=2)  # NEST_DATA_PROGRESS=0 in the tests
    assert capsys.readouterr().err == ""



def test_progress_follows_the_call_and_set_options(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A public call's show_progress= holds for the layers below it, which take no option."""
    kw = {"modalities": ["eeg"], "subjects": [1], "imagesets": ["things"], "n_images": 2}
    # A bar drawn by run_jobs, which has no show_progress=: tqdm draws 0% once as the bar
    # starts, and 100% once or twice (on the update, if 0.1 s have passed, and on closing).
    drawn = "writing NED files:   0%"
    write_ned(tmp_path / "a", **kw, show_progress=True)
    assert capsys.readouterr().err.count(drawn) == 1
    with nest_data.set_options(progress=True):
        write_ned(tmp_path / "b", **kw)
        write_ned(tmp_path / "c", **kw, show_progress=False)  # the call's own option wins
    assert capsys.readouterr().err.count(drawn) == 1
    write_ned(tmp_path / "d", **kw)  # the block is over: NEST_DATA_PROGRESS=0 again
    nest_data.set_options(progress=True)  # for the rest of the session
    try:
        write_ned(tmp_path / "e", **kw)
    finally:
        nest_data.set_options(progress=None)
    assert capsys.readouterr().err.count(drawn) == 1
    with pytest.raises(nest_data.InputError, match="progress='yes': give True"):
        nest_data.set_options(progress="yes")  # type: ignore[arg-type]


# ------------------------------------------------------------------------- errors


def test_error_messages(collection: Path) -> None:
    tree = open_tree(collection)
    da = tree["sub-01/V1"]["responses"]
    nsd_v1 = nest_data.open(imageset="nsd", subject=2, roi="V1", location=str(collection))
    cases = [
        (lambda: nest_data.roi_mean(da, min_ncsnr=99), "no voxel has ncsnr > 99 in things "
         "sub-01 V1"),
        (lambda: nest_data.roi_means([da, tree["sub-02/FFA-1"]["responses"]]),
         "missing: sub-01 FFA-1, sub-02 V1"),
        (lambda: nest_data.roi_means([da, da]), "sub-01 V1 is given twice"),
        (lambda: nest_data.roi_means([da, nsd_v1.isel(image=slice(0, 10))]),
         "has 30 images and nsd sub-02 V1 has 10"),
        (lambda: nest_data.roi_means("V1"), "got str"),
        (lambda: nest_data.top_images(da, k=0), "k must be a positive number"),
        (lambda: nest_data.top_images(tree), "top_images ranks one ROI; got 3 (V1, FFA-1, "
         "lateral)"),
        (lambda: nest_data.univariate_rnc(tree), "got rois=['V1', 'FFA-1', 'lateral'] and "
         "the data holds V1, FFA-1, lateral. Pass rois=(roi_1, roi_2)"),
        (lambda: nest_data.univariate_rnc(tree, rois=("V1", "V1")), "two distinct ROIs"),
        (lambda: nest_data.univariate_rnc(tree, rois=("V1", "PPA")), "the data holds"),
        (lambda: nest_data.univariate_rnc(tree, rois=("V1", "FFA-1"), batch_size=31),
         "batch_size=31 is more than the 30 images; use batch_size <= 30"),
        (lambda: nest_data.univariate_rnc(tree, rois=("V1", "FFA-1"), margin=-1),
         "margin must be a finite number >= 0"),
        (lambda: nest_data.univariate_rnc(tree, rois=("V1", "FFA-1"), n_images=0),
         "n_images must be a positive integer, got 0"),
        (lambda: nest_data.rsm(da, images=[0, 30]), "valid are 0 to 29"),
        (lambda: nest_data.rsm(da, images=[1]), "at least 2 images; images= selects 1"),
        (lambda: nest_data.rsm(da, images=[0.5, 1.5]), "integer positions along 'image'"),
        (lambda: nest_data.rsm(da, images=np.ones(3, bool)), "one value per image (30)"),
        (lambda: nest_data.rsa(nest_data.rsm(da, range(4)), nest_data.rsm(da, range(5))),
         "same images in the same order"),
        (lambda: nest_data.rsa(nest_data.rsm(da, range(4)), nest_data.rsm(da, range(4)),
                               method="kendall"),
         "method must be 'spearman' or 'pearson', got 'kendall'"),
        (lambda: nest_data.rsa_matrix([da]), "at least 2 entries"),
    ]
    for call, message in cases:
        with pytest.raises(NestDataError) as info:
            call()
        assert message in str(info.value), (message, str(info.value))
    eeg = nest_data.open(modality="eeg", imageset="things", subject=1,
                         location=str(collection))
    with pytest.raises(NestDataError,
                       match="needs an fMRI entry with a 'voxel' or 'vertex' dimension"):
        nest_data.roi_mean(eeg)
    with pytest.raises(NestDataError, match="min_ncsnr= selects fMRI voxels"):
        nest_data.rsm(eeg, range(3), min_ncsnr=0.5)


# ------------------------------------------------------------------------- examples


@pytest.mark.parametrize(("script", "extra"), [
    ("top_images", []), ("rnc", []), ("rsa", []),
    ("dreams", ["--steps", "6", "--size", "96"]),  # few steps: the figure, not the dreams
    ("decoding", ["--n-images", "36", "--test-fraction", "0.25", "--epochs", "1"]),  # end to end
])
def test_example_writes_its_figure(demo: Path, tmp_path: Path, script: str,
                                   extra: list[str]) -> None:
    proc = subprocess.run([sys.executable, str(EXAMPLES / f"{script}.py"), "--out",
                           str(tmp_path), *extra], capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    png = tmp_path / f"{script}.png"
    assert f"wrote {png}" in proc.stderr
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    pixels = matplotlib.image.imread(png)
    assert pixels.shape[0] > 300 and pixels.shape[1] > 500
    assert pixels[..., :3].std() > 0.05  # drawn on, not a blank canvas
