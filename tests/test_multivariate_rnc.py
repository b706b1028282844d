"""Multivariate RNC: scores against RNC's arithmetic, cv, null, determinism, search quality.

The reference is written here from RNC's scripts (gifale95/RNC, ``04_multivariate_rnc``):
per-subject RSMs of Pearson correlations over the voxels with ncsnr > 0.5, stored as float32
lower triangles (``01_create_rsms.py``), summed into a symmetric float32 matrix and averaged
over subjects (``02_merge_rsms.py``, ``03_average_rsms.py``), and a batch's score is
``scipy.stats.pearsonr`` of the two ROIs' lower triangles (``utils.evaluate``).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from nest_data.analysis.multivariate import (
    _bh,
    _binomial_tail,
    _cells,
    _mutate,
    _Ops,
    _prepare,
    _Run,
    _Scorer,
    _swap_scores,
    multivariate_rnc,
    mutation_sizes,
)
from nest_data.errors import InputError

stats = pytest.importorskip("scipy.stats")

SMALL = {"generations": 6, "n_batches": 6, "batch_size": 12, "null_samples": 300,
         "show_progress": False}


def planted(n_images: int = 240, subjects: Sequence[int] = (1, 2, 3), voxels=(70, 50),
            seed: int = 0) -> list[xr.DataArray]:
    """Responses of ROIs "A" and "B" that share a representation on some images only: image
    i mixes shared latent features (weight w_i) with features unique to each ROI (1 - w_i),
    plus noise, through each subject's own random voxel weights."""
    rng = np.random.default_rng(seed)
    shared = rng.standard_normal((n_images, 6))
    w = rng.beta(0.6, 0.6, n_images)[:, None]
    out = []
    for s in subjects:
        for roi, v in zip("AB", voxels, strict=True):
            unique = rng.standard_normal((n_images, 6))
            x = (np.sqrt(w) * shared @ rng.standard_normal((6, v))
                 + np.sqrt(1 - w) * unique @ rng.standard_normal((6, v))
                 + 0.3 * rng.standard_normal((n_images, v)))
            out.append(xr.DataArray(
                x.astype(np.float32), dims=("image", "voxel"),
                coords={"image": [f"img{i:04d}" for i in range(n_images)],
                        "ncsnr": ("voxel", rng.uniform(0, 1.2, v).astype(np.float32))},
                attrs={"subject": s, "roi": roi, "imageset": "planted"}))
    return out


def rnc_rsm(das: list[xr.DataArray], roi: str, subjects: set[int]) -> np.ndarray:
    """The subject-averaged RSM as RNC's scripts 01-03 build it."""
    n = das[0].sizes["image"]
    lower, upper = np.tril_indices(n, -1), np.triu_indices(n, 1)
    average = np.zeros((n, n), dtype=np.float32)
    used = [da for da in das if da.attrs["roi"] == roi and da.attrs["subject"] in subjects]
    for da in used:
        x = da.values[:, da["ncsnr"].values > 0.5]
        rsm = np.zeros((n, n), dtype=np.float32)
        rsm[lower] = np.corrcoef(x)[lower]  # 01: float32, lower triangle only
        average[lower] += rsm[lower]  # 02-03: both triangles from each subject
        average[upper] += rsm.T[upper]
    return average / np.float32(len(used)) if len(used) > 1 else average


def rnc_evaluate(batches: np.ndarray, rsm_1: np.ndarray, rsm_2: np.ndarray) -> np.ndarray:
    """RNC's ``utils.evaluate``: pearsonr of the batch's lower triangles."""
    tri = np.tril_indices(batches.shape[-1], -1)
    return np.array([stats.pearsonr(rsm_1[np.ix_(b, b)][tri], rsm_2[np.ix_(b, b)][tri])[0]
                     for b in batches.reshape(-1, batches.shape[-1])])


@pytest.fixture(scope="module")
def das() -> list[xr.DataArray]:
    return planted()


@pytest.mark.parametrize("rsm_entries", ["on_demand", "in_memory"])
def test_scores_equal_rnc_evaluate_on_rnc_rsms(das: list[xr.DataArray], rsm_entries: str
                                               ) -> None:
    res = multivariate_rnc(das, rois=("A", "B"), rsm_entries=rsm_entries, **SMALL)
    assert res.attrs["rsm_entries"] == rsm_entries
    rsms = [rnc_rsm(das, roi, {1, 2, 3}) for roi in "AB"]
    for control in ("align", "disentangle"):
        run = res.sel(control=control)
        expected = rnc_evaluate(run.image_index.values, *rsms)
        np.testing.assert_allclose(run.score.values, expected, rtol=0, atol=1e-6)
    baseline = rnc_evaluate(res.baseline_image_index.values[None], *rsms)
    np.testing.assert_allclose(res.baseline_score.values, baseline[0], rtol=0, atol=1e-6)
    # the labels are those of the chosen positions; every batch holds distinct images
    labels = das[0]["image"].values
    np.testing.assert_array_equal(res.image.values, labels[res.image_index.values])
    index = res.image_index.values
    assert (np.diff(index, axis=-1) > 0).all()


def test_in_memory_and_on_demand_run_the_same_search(das: list[xr.DataArray]) -> None:
    a = multivariate_rnc(das, rois=("A", "B"), rsm_entries="on_demand", cv=True,
                         stats_iterations=100, **SMALL)
    b = multivariate_rnc(das, rois=("A", "B"), rsm_entries="in_memory", cv=True,
                         stats_iterations=100, **SMALL)
    np.testing.assert_array_equal(a.image_index.values, b.image_index.values)
    for name in ("score", "score_test", "null_distribution", "null_distribution_test"):
        np.testing.assert_allclose(a[name].values, b[name].values, rtol=0, atol=1e-12)


def test_cross_validation_scores_train_and_held_out_subjects(das: list[xr.DataArray]) -> None:
    res = multivariate_rnc(das, rois=("A", "B"), cv=True, stats_iterations=100, **SMALL)
    assert res.score.dims == ("control", "test_subject", "generation")
    assert res.test_subject.values.tolist() == [1, 2, 3]
    for held_out in (1, 2, 3):
        train = [rnc_rsm(das, roi, {1, 2, 3} - {held_out}) for roi in "AB"]
        test = [rnc_rsm(das, roi, {held_out}) for roi in "AB"]
        for control in ("align", "disentangle"):
            run = res.sel(control=control, test_subject=held_out)
            np.testing.assert_allclose(run.score.values,
                                       rnc_evaluate(run.image_index.values, *train), atol=1e-6)
            np.testing.assert_allclose(run.score_test.values,
                                       rnc_evaluate(run.image_index.values, *test), atol=1e-6)
        fold = res.sel(test_subject=held_out)
        base = fold.baseline_image_index.values[None]
        np.testing.assert_allclose(fold.baseline_score.values,
                                   rnc_evaluate(base, *train)[0], atol=1e-6)
        np.testing.assert_allclose(fold.baseline_score_test.values,
                                   rnc_evaluate(base, *test)[0], atol=1e-6)
        # RNC picks the baseline on the training subjects' null
        null = fold.null_distribution.values
        assert np.abs(null - null.mean()).argmin() == np.abs(null - fold.baseline_score.values
                                                             ).argmin()


@pytest.mark.parametrize(("rsm_entries", "group"), [("on_demand", (0, 1, 2)),
                                                   ("in_memory", (0, 1, 2)),
                                                   ("in_memory", (0, 2)), ("in_memory", (1,))])
def test_swap_scores_equal_exact_scores_of_every_swap(das: list[xr.DataArray],
                                                      rsm_entries: str,
                                                      group: tuple[int, ...]) -> None:
    """Every single-image swap scored at once equals that batch scored from scratch."""
    n, size = das[0].sizes["image"], 12
    run = _Run(n_images=n, batch_size=size, n_batches=6, generations=1,
               sizes=mutation_sizes(size), cv=True, n_subjects=3)
    tables = _prepare(_cells(das, "test"), [1, 2, 3], ["A", "B"], 0.5, _Ops(), rsm_entries,
                      cv=True)
    scorer = _Scorer(tables["A"], tables["B"], _Ops(), run)
    batch = np.sort(np.random.default_rng(5).choice(n, size, replace=False))
    swapped = _swap_scores(scorer.cross(batch, 0, group), scorer.cross(batch, 1, group),
                           batch)
    assert swapped.shape == (n, size)
    assert np.isnan(swapped[batch]).all() and np.isfinite(np.delete(swapped, batch, 0)).all()
    outside = np.setdiff1d(np.arange(n), batch)
    every = np.repeat(batch[None], len(outside) * size, axis=0)
    every[np.arange(len(every)), np.tile(np.arange(size), len(outside))] = \
        np.repeat(outside, size)
    every.sort(axis=1)
    exact = scorer.scores(every, group).reshape(len(outside), size)
    np.testing.assert_allclose(swapped[outside], exact, rtol=0, atol=1e-12)


def test_refine_improves_the_final_batch_by_exact_single_swaps(das: list[xr.DataArray]
                                                               ) -> None:
    plain = multivariate_rnc(das, rois=("A", "B"), **SMALL)
    res = multivariate_rnc(das, rois=("A", "B"), refine=8, **SMALL)
    assert "refined_score" not in plain and res.attrs["refine"] == 8
    # the generations stay RNC's search: refinement draws nothing
    np.testing.assert_array_equal(res.image_index.values, plain.image_index.values)
    np.testing.assert_array_equal(res.score.values, plain.score.values)
    rsms = [rnc_rsm(das, roi, {1, 2, 3}) for roi in "AB"]
    labels = das[0]["image"].values
    for control in ("align", "disentangle"):
        run = res.sel(control=control)
        batch = run.refined_image_index.values
        assert (np.diff(batch) > 0).all()
        np.testing.assert_array_equal(run.refined_image.values, labels[batch])
        score = float(run.refined_score)
        np.testing.assert_allclose(score, rnc_evaluate(batch[None], *rsms)[0], atol=1e-6)
        final = float(run.score[-1])
        swaps = int(run.refined_swaps)
        assert 1 <= swaps <= 8
        changed = np.setdiff1d(batch, run.image_index.values[-1]).size
        assert 1 <= changed <= swaps
        if control == "align":
            assert score > final
        else:
            assert abs(score) < abs(final)
        if swaps < 8:  # stopped early: no single swap improves (RNC's float32 RSMs: 1e-6)
            outside = np.setdiff1d(np.arange(len(labels)), batch)
            trials = np.repeat(batch[None], len(outside) * len(batch), axis=0)
            trials[np.arange(len(trials)), np.tile(np.arange(len(batch)), len(outside))] = \
                np.repeat(outside, len(batch))
            others = rnc_evaluate(trials, *rsms)
            if control == "align":
                assert others.max() <= score + 1e-6
            else:
                assert np.abs(others).min() >= abs(score) - 1e-6


def test_refine_with_cross_validation_scores_the_held_out_subject(das: list[xr.DataArray]
                                                                  ) -> None:
    res = multivariate_rnc(das, rois=("A", "B"), cv=True, stats_iterations=100, refine=3,
                           **SMALL)
    assert res.refined_score.dims == res.refined_score_test.dims == ("control",
                                                                      "test_subject")
    for held_out in (1, 2, 3):
        train = [rnc_rsm(das, roi, {1, 2, 3} - {held_out}) for roi in "AB"]
        test = [rnc_rsm(das, roi, {held_out}) for roi in "AB"]
        run = res.sel(control="disentangle", test_subject=held_out)
        batch = run.refined_image_index.values[None]
        np.testing.assert_allclose(run.refined_score.values, rnc_evaluate(batch, *train)[0],
                                   atol=1e-6)
        np.testing.assert_allclose(run.refined_score_test.values,
                                   rnc_evaluate(batch, *test)[0], atol=1e-6)
        assert abs(float(run.refined_score)) <= abs(float(run.score[-1]))


def test_statistics_follow_rnc_06_stats(das: list[xr.DataArray]) -> None:
    n_iter = 100
    res = multivariate_rnc(das, rois=("A", "B"), cv=True, stats_iterations=n_iter, **SMALL)
    null = res.null_distribution_test.values  # (test_subject, null_sample)
    base_test = res.baseline_score_test.values
    for c, control in enumerate(("align", "disentangle")):
        final = res.score_test.sel(control=control).values[:, -1]
        block = null[:, (c + 1) * n_iter:(c + 2) * n_iter] - null[:, :n_iter]
        observed = (final - base_test)[:, None]
        beyond = block > observed if control == "align" else block < observed
        expected = (beyond.sum(axis=1) + 1) / (n_iter + 1)
        np.testing.assert_allclose(res.p_value.sel(control=control).values, expected)
    assert res.score_test_ci.dims == ("control", "bound")
    low, high = res.score_test_ci.sel(control="align").values
    mean = res.score_test.sel(control="align").values[:, -1].mean()
    assert low <= mean <= high


def test_statistics_helpers_match_statsmodels_and_scipy() -> None:
    p = np.array([[0.01, 0.04], [0.03, 0.04], [0.2, 0.01], [0.06, 0.07]])
    # statsmodels multipletests(p, 0.05, "fdr_bh") row by row
    assert _bh(p).tolist() == [[True, True], [True, True], [False, True], [False, False]]
    for k in range(5):
        assert _binomial_tail(k, 8) == pytest.approx(1 - stats.binom.cdf(k - 1, 8, 0.05))


def test_null_distribution_and_baseline(das: list[xr.DataArray]) -> None:
    res = multivariate_rnc(das, rois=("A", "B"), control="align", **SMALL)
    null = res.null_distribution.values
    assert null.shape == (300,) and np.isfinite(null).all() and (np.abs(null) <= 1).all()
    assert np.abs(null - null.mean()).min() == abs(res.baseline_score.values - null.mean())
    # the search beats every random batch of the null
    assert float(res.score[-1]) > null.max()
    none = multivariate_rnc(das, control="align", **{**SMALL, "null_samples": 0})  # rois: A, B
    assert (str(none.roi_1.values), str(none.roi_2.values)) == ("A", "B")
    assert "null_distribution" not in none and "baseline_score" not in none
    np.testing.assert_array_equal(none.image_index.values, res.image_index.values)


def test_search_finds_planted_alignment_and_disentanglement() -> None:
    das = planted(n_images=400, seed=1)
    res = multivariate_rnc(das, rois=("A", "B"), generations=40, n_batches=20,
                           batch_size=20, null_samples=2000, show_progress=False)
    align = res.score.sel(control="align").values
    disentangle = np.abs(res.score.sel(control="disentangle").values)
    null = res.null_distribution.values
    # elitism: the best batch never gets worse
    assert (np.diff(align) >= 0).all() and (np.diff(disentangle) <= 0).all()
    assert align[-1] > 0.9 > np.percentile(null, 99)
    assert disentangle[-1] < 1e-3 < np.percentile(np.abs(null), 1)
    # aligning batches hold the images whose structure is shared, disentangling ones not
    rng = np.random.default_rng(1)
    rng.standard_normal((400, 6))
    shared_weight = rng.beta(0.6, 0.6, 400)  # as planted() draws it
    chosen = res.image_index.isel(generation=-1)
    assert (shared_weight[chosen.sel(control="align").values].mean()
            > shared_weight.mean() + 0.2
            > shared_weight[chosen.sel(control="disentangle").values].mean() + 0.2)


def test_same_seed_same_result_and_sequences_match_single_runs(das: list[xr.DataArray]) -> None:
    kw = {**SMALL, "rois": ("A", "B")}
    one = multivariate_rnc(das, control="align", seed=7, **kw)
    xr.testing.assert_identical(one, multivariate_rnc(das, control="align", seed=7, **kw))
    other = multivariate_rnc(das, control="align", seed=8, **kw)
    assert not np.array_equal(one.image_index.values, other.image_index.values)
    both = multivariate_rnc(das, control=["align", "disentangle"], seed=[7, 8], **kw)
    assert both.score.dims == ("control", "seed", "generation")
    for name in ("score", "image_index", "baseline_score", "null_distribution"):
        np.testing.assert_array_equal(both[name].sel(control="align", seed=7).values
                                      if "control" in both[name].dims
                                      else both[name].sel(seed=7).values, one[name].values)


def test_several_pairs_share_the_responses() -> None:
    das = planted(n_images=150)
    extra = [da.copy().assign_attrs(roi="C") for da in das if da.attrs["roi"] == "B"]
    res = multivariate_rnc(das + extra, rois=[("A", "B"), ("A", "C")], control="align",
                           **SMALL)
    assert res.pair.values.tolist() == ["A-B", "A-C"]
    assert res.roi_2.values.tolist() == ["B", "C"]
    # C is a copy of B: both pairs run the same search
    np.testing.assert_array_equal(res.image_index.values[0], res.image_index.values[1])
    assert res.n_voxels.sel(roi="C").values.tolist() == res.n_voxels.sel(roi="B").values.tolist()


def test_mutations_replace_distinct_images_from_outside_the_batch() -> None:
    assert mutation_sizes(50) == (1, 5, 12, 25, 38)  # RNC: round(50 / 100 * 25) == 12
    rng = np.random.default_rng(0)
    for n_images in (40, 5000):  # few outside (random keys) and many (redraws)
        parents = np.sort(np.stack([rng.choice(n_images, 20, replace=False)
                                    for _ in range(30)]), axis=1)
        sizes = mutation_sizes(20)
        mutants = _mutate(rng, parents, n_images, sizes)
        assert mutants.shape == (30 * 5, 20)
        for i, m in enumerate(mutants):
            parent = parents[i // 5]
            assert len(set(m.tolist())) == 20 and (np.diff(m) > 0).all()
            assert len(set(m.tolist()) - set(parent.tolist())) == sizes[i % 5]


def test_distributed_cluster_gives_the_same_result(das: list[xr.DataArray]) -> None:
    distributed = pytest.importorskip("distributed")
    kw = {**SMALL, "rois": ("A", "B"), "seed": [1, 2], "cv": True, "stats_iterations": 100,
          "refine": 2}
    local = multivariate_rnc(das, **kw)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  protocol="tcp", host="127.0.0.1",
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster):
        remote = multivariate_rnc(das, **kw)
    xr.testing.assert_identical(local, remote)


def test_torch_device_gives_numpy_scores(das: list[xr.DataArray]) -> None:
    pytest.importorskip("torch")
    kw = {**SMALL, "rois": ("A", "B"), "control": "align", "refine": 3}
    for mode in ("on_demand", "in_memory"):
        ref = multivariate_rnc(das, rsm_entries=mode, **kw)
        res = multivariate_rnc(das, rsm_entries=mode, device="cpu", **kw)
        for name in ("image_index", "refined_image_index", "refined_swaps"):
            np.testing.assert_array_equal(res[name].values, ref[name].values)
        for name in ("score", "refined_score"):
            np.testing.assert_allclose(res[name].values, ref[name].values, atol=1e-12)


def test_progress_bar_counts_generations(das: list[xr.DataArray],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    multivariate_rnc(das, rois=("A", "B"), control="align",
                     **{**SMALL, "show_progress": True})
    err = capsys.readouterr().err
    assert "multivariate RNC (generations)" in err and "6/6" in err


def test_example_writes_its_figure(demo: Path, tmp_path: Path) -> None:
    matplotlib = pytest.importorskip("matplotlib.image")
    script = Path(__file__).resolve().parents[1] / "examples" / "multivariate_rnc.py"
    proc = subprocess.run([sys.executable, str(script), "--out", str(tmp_path),
                           "--generations", "10", "--null-samples", "2000"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    png = tmp_path / "multivariate_rnc.png"
    assert f"wrote {png}" in proc.stderr and "align" in proc.stderr
    pixels = matplotlib.imread(png)
    assert pixels.shape[0] > 400 and pixels.shape[1] > 700
    assert pixels[..., :3].std() > 0.05  # drawn on, not a blank canvas


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"rois": ("A", "Z")}, "ROI 'Z' is not in the entries, which hold A, B"),
    ({"rois": ("A",)}, "compares two distinct ROIs"),
    ({"rois": ("A", "A")}, "compares two distinct ROIs"),
    ({"rois": ("A", "B", "C")}, "compares two distinct ROIs"),
    ({"control": "maximise"}, "control must be one of 'align', 'disentangle'"),
    ({"generations": 0}, "generations must be a positive integer, got 0"),
    ({"n_batches": 1.5}, "n_batches must be a positive integer"),
    ({"batch_size": 2}, "batch_size must be at least 3"),
    ({"batch_size": 200}, "batch_size=200 needs at least 350 images"),
    ({"null_samples": -1}, "null_samples must be an integer >= 0"),
    ({"refine": -1}, "refine must be an integer >= 0 (0: RNC's search only; try 50)"),
    ({"refine": True}, "refine must be an integer >= 0"),
    ({"seed": [1, 1]}, "distinct seeds"),
    ({"seed": -3}, "seed must be an integer >= 0"),
    ({"rsm_entries": "disk"}, "rsm_entries must be one of"),
    ({"cv": True, "null_samples": 100}, "pass stats_iterations <= 33"),
    ({"device": 3}, "device must be None (NumPy) or a torch device name"),
])
def test_bad_input_says_what_to_pass(das: list[xr.DataArray], kwargs: dict[str, object],
                                     message: str) -> None:
    args = {**SMALL, "rois": ("A", "B"), **kwargs}
    with pytest.raises(InputError) as err:
        multivariate_rnc(das, **args)
    assert message in str(err.value)


def test_bad_entries_say_what_to_pass(das: list[xr.DataArray]) -> None:
    with pytest.raises(InputError, match=r"missing: sub-03 B"):
        multivariate_rnc(das[:-1], rois=("A", "B"), **SMALL)
    shorter = [da.isel(image=slice(0, 200)) if da.attrs["subject"] == 2 else da for da in das]
    with pytest.raises(InputError, match="needs entries of the same images"):
        multivariate_rnc(shorter, rois=("A", "B"), **SMALL)
    one = [da for da in das if da.attrs["subject"] == 1]
    with pytest.raises(InputError, match="needs at least 2 subjects"):
        multivariate_rnc(one, rois=("A", "B"), cv=True, **SMALL)
    with pytest.raises(InputError, match="given twice"):
        multivariate_rnc([*das, das[0]], rois=("A", "B"), **SMALL)
    eeg = xr.DataArray(np.zeros((4, 3)), dims=("image", "channel"))
    with pytest.raises(InputError, match="'voxel' or 'vertex' dimension"):
        multivariate_rnc([eeg], **SMALL)
