"""fsaverage5 as a vertex selection, and neuralbench's image-decoding task on responses.

The selection is checked on a full-size fsaverage labelling (327,684 vertices in a store's
ROI order) whose values are the vertices' own indices, so every selected value names its
vertex; the mesh check reads nilearn's fsaverage5 sphere.  Decoding is checked on planted
signal: responses that are a linear map of the image embeddings plus noise.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import dask.array
import numpy as np
import pytest
import xarray as xr

from nest_data._surface import N_FSAVERAGE_VERTICES, store_order, surface_labels
from nest_data.analysis.surface import SURFACE_SPACES, surface_space
from nest_data.errors import InputError

torch = pytest.importorskip("torch")

from nest_data.decoding import decode_images, heldout_split, image_embeddings  # noqa: E402

N5 = 10242  # fsaverage5's vertices per hemisphere


class CountingReads:
    """A dask array of ``values`` that counts the blocks computed."""

    def __init__(self, values: np.ndarray, chunks: tuple[int, int]) -> None:
        self.reads = 0
        self.values = values

        def block(x: np.ndarray) -> np.ndarray:
            self.reads += bool(x.size)  # dask calls it on empty arrays to learn the dtype
            return x

        self.array = dask.array.from_array(values, chunks=chunks).map_blocks(block)


def fsaverage_entry(n_images: int = 2) -> tuple[xr.DataArray, CountingReads]:
    """A whole-surface entry in ROI order whose value at a vertex is its global index plus
    a tenth of its image."""
    n = N_FSAVERAGE_VERTICES
    labels = surface_labels(n, n)
    rng = np.random.default_rng(0)
    rois = {"a": rng.choice(2 * n, 5000, replace=False), "b": rng.choice(2 * n, 900,
                                                                         replace=False)}
    order = store_order(rois, 2 * n)
    values = (order[None, :] + 0.1 * np.arange(n_images)[:, None]).astype(np.float64)
    counting = CountingReads(values, (n_images, 4096))
    da = xr.DataArray(counting.array, dims=("image", "vertex"),
                      coords={"image": np.arange(n_images), "vertex": order,
                              "hemisphere": ("vertex", labels["hemisphere"][order]),
                              "fsaverage_index": ("vertex", labels["fsaverage_index"][order])},
                      attrs={"n_vertices": {"lh": n, "rh": n}, "space": "fsaverage surface"})
    return da, counting


def test_fsaverage5_selects_first_vertices_of_each_hemisphere_lazily() -> None:
    da, counting = fsaverage_entry()
    before = counting.reads
    fs5 = surface_space(da, "fsaverage5")
    assert counting.reads == before and isinstance(fs5.data, dask.array.Array)
    assert fs5.sizes == {"image": 2, "vertex": 2 * N5}
    # left hemisphere first, by index, as nilearn's fsaverage5 mesh numbers them
    assert fs5.hemisphere.values.tolist() == ["lh"] * N5 + ["rh"] * N5
    expected_index = np.tile(np.arange(N5), 2)
    np.testing.assert_array_equal(fs5.fsaverage_index.values, expected_index)
    expected_vertex = np.concatenate([np.arange(N5), N_FSAVERAGE_VERTICES + np.arange(N5)])
    np.testing.assert_array_equal(fs5.vertex.values, expected_vertex)
    values = fs5.values
    assert counting.reads > before
    np.testing.assert_array_equal(values[0], expected_vertex)  # each value names its vertex
    np.testing.assert_array_equal(values[1], expected_vertex + 0.1)
    assert fs5.attrs["mesh"] == "fsaverage5"
    assert fs5.attrs["n_vertices"] == {"lh": N5, "rh": N5}
    assert "fsaverage5" in fs5.attrs["space"]
    assert da.attrs["n_vertices"] == {"lh": N_FSAVERAGE_VERTICES, "rh": N_FSAVERAGE_VERTICES}


def test_other_spaces_datasets_and_rois() -> None:
    da, _ = fsaverage_entry(1)
    assert surface_space(da, "fsaverage4").sizes["vertex"] == 2 * 2562
    whole = surface_space(da, "fsaverage")
    assert whole.sizes["vertex"] == 2 * N_FSAVERAGE_VERTICES
    np.testing.assert_array_equal(whole.values[0], np.arange(2 * N_FSAVERAGE_VERTICES))
    ds = surface_space(da.to_dataset(name="responses"), "fsaverage5")
    assert ds.responses.sizes["vertex"] == 2 * N5 and ds.attrs["mesh"] == "fsaverage5"
    roi = da.isel(vertex=slice(0, 5000))  # the largest ROI comes first in ROI order
    kept = surface_space(roi)
    on_fs5 = roi.fsaverage_index.values < N5
    assert kept.sizes["vertex"] == on_fs5.sum() > 0
    assert set(kept.vertex.values) == set(roi.vertex.values[on_fs5])
    # fsaverage5 of fsaverage5 is itself; a finer mesh of it is refused
    twice = surface_space(surface_space(da))
    np.testing.assert_array_equal(twice.vertex.values, surface_space(da).vertex.values)
    with pytest.raises(InputError, match="coarser than fsaverage6"):
        surface_space(surface_space(da), "fsaverage6")


def test_open_takes_the_space(demo: Any) -> None:
    import nest_data

    keys = {"imageset": "things", "subject": 1, "train_dataset": "nsd_fsaverage",
            "location": "demo"}
    fs5 = nest_data.open(**keys, space="fsaverage5")
    xr.testing.assert_identical(fs5, surface_space(nest_data.open(**keys)))
    assert fs5.sizes["vertex"] == 2 * N5 and fs5.attrs["mesh"] == "fsaverage5"
    with pytest.raises(InputError, match="fsaverage"):
        nest_data.open(imageset="things", subject=1, roi="V1", location="demo",
                       space="fsaverage5")


def test_fsaverage5_is_the_nested_head_of_the_icosahedral_mesh() -> None:
    """nilearn ships fsaverage5 only (not fsaverage): check on its sphere that every mesh
    level is the head of the next, so fsaverage5 is fsaverage's first 10,242 vertices.

    FreeSurfer's icosahedral meshes number the 12 icosahedron vertices first, then, level by
    level, the midpoints of the previous level's edges.  On nilearn's fsaverage5 sphere
    (radius 100), each vertex of level k (``10 * 4**(k-1) + 2`` to ``10 * 4**k + 2``) is the
    normalised midpoint of its two nearest vertices of lower levels, and these pairs are
    ``30 * 4**(k-1)`` distinct edges: every edge of level k-1 split once.  fsaverage
    (level 7) continues the same subdivision, so its first 10,242 vertices are these.
    """
    pytest.importorskip("nilearn")
    from nilearn.datasets import load_fsaverage
    from scipy.spatial import cKDTree

    sphere = load_fsaverage("fsaverage5")["sphere"]
    for part in ("left", "right"):
        xyz = np.asarray(sphere.parts[part].coordinates, dtype=np.float64)
        assert len(xyz) == SURFACE_SPACES["fsaverage5"] == N5
        np.testing.assert_allclose(np.linalg.norm(xyz, axis=1), 100, atol=0.01)
        cosines = (xyz[:12] @ xyz[:12].T / 1e4)[~np.eye(12, dtype=bool)]
        for value, count in ((1 / np.sqrt(5), 60), (-1 / np.sqrt(5), 60), (-1, 12)):
            assert (np.abs(cosines - value) < 1e-3).sum() == count  # an icosahedron
        previous = 12
        for order in range(1, 6):
            n = 10 * 4**order + 2
            dist, pairs = cKDTree(xyz[:previous]).query(xyz[previous:n], k=3)
            midpoint = xyz[pairs[:, 0]] + xyz[pairs[:, 1]]
            midpoint *= 100 / np.linalg.norm(midpoint, axis=1, keepdims=True)
            assert np.abs(midpoint - xyz[previous:n]).max() < 0.05
            assert (dist[:, 1] - dist[:, 0] < 0.01 * dist[:, 1]).all()  # halfway between
            assert (dist[:, 2] > 1.3 * dist[:, 1]).all()  # the two nearest, then a gap
            edges = {tuple(sorted(p)) for p in pairs[:, :2].tolist()}
            assert len(edges) == n - previous == 30 * 4 ** (order - 1)
            previous = n


def test_surface_space_errors() -> None:
    voxels = xr.DataArray(np.zeros((2, 3)), dims=("image", "voxel"))
    with pytest.raises(InputError, match="needs an fsaverage entry.*'voxel'.*nsd_fsaverage"):
        surface_space(voxels)
    with pytest.raises(InputError, match="takes an xarray DataArray"):
        surface_space(np.zeros((2, 3)))  # type: ignore[type-var]
    da, _ = fsaverage_entry(1)
    with pytest.raises(InputError, match="space='fsaverage8' is not an fsaverage mesh.*"
                                         "'fsaverage5'"):
        surface_space(da, "fsaverage8")
    small = xr.DataArray(np.zeros((1, 2 * 642)), dims=("image", "vertex"),
                         coords={**{k: ("vertex", v) for k, v in surface_labels(642, 642).items()}},
                         attrs={"n_vertices": {"lh": 642, "rh": 642}})
    with pytest.raises(InputError, match="642 vertices per hemisphere, coarser than fsaverage5"
                                         ".*'fsaverage3'"):
        surface_space(small)
    assert surface_space(small, "fsaverage3").sizes["vertex"] == 2 * 642
    fine_only = da.isel(vertex=np.flatnonzero(da.fsaverage_index.values >= N5)[:10])
    with pytest.raises(InputError, match="none of the entry's 10 vertices lies on fsaverage5"):
        surface_space(fine_only)


# --- decoding ---------------------------------------------------------------------------

def planted(n_images: int = 300, n_features: int = 16, n_units: int = 120,
            noise: float = 10.0, seed: int = 0) -> tuple[xr.DataArray, xr.DataArray]:
    """Embeddings, and responses that carry them (a random linear map) plus noise."""
    rng = np.random.default_rng(seed)
    labels = [f"img{i:04d}" for i in range(n_images)]
    emb = rng.normal(size=(n_images, n_features)).astype(np.float32)
    resp = emb @ rng.normal(size=(n_features, n_units)) + noise * rng.normal(
        size=(n_images, n_units))
    shared = np.zeros(n_images, dtype=bool)
    shared[rng.permutation(n_images)[:60]] = True
    embeddings = xr.DataArray(emb, dims=("image", "feature"), coords={"image": labels})
    responses = xr.DataArray(resp.astype(np.float32), dims=("image", "vertex"),
                             coords={"image": labels, "shared1000": ("image", shared)})
    return embeddings, responses


def loader(da: xr.DataArray, batch_size: int, repeats: int = 1) -> list[dict[str, Any]]:
    """Batches as a DataLoader over nest_data.torch yields them (each image ``repeats``x)."""
    batches = []
    for r in range(repeats):
        for start in range(0, da.sizes["image"], batch_size):
            part = da.isel(image=slice(start, start + batch_size))
            batches.append({"responses": torch.from_numpy(part.values + 0.01 * r),
                            "image": [str(v) for v in part.image.values],
                            "index": torch.arange(start, start + part.sizes["image"])})
    return batches


def test_heldout_split_holds_shared_images_out() -> None:
    _, responses = planted()
    train, test = heldout_split(responses)
    assert test.sizes["image"] == 60 and bool(test.shared1000.all())
    assert not set(train.image.values) & set(test.image.values)
    assert sorted([*train.image.values, *test.image.values]) == sorted(responses.image.values)
    train, test = heldout_split(responses, test=[0, 5])
    assert test.image.values.tolist() == ["img0000", "img0005"]
    assert train.sizes["image"] == 298
    with pytest.raises(InputError, match="no 'shared1000' coordinate.*test="):
        heldout_split(responses.drop_vars("shared1000"))
    with pytest.raises(InputError, match="both sides need images"):
        heldout_split(responses, test=np.ones(300, dtype=bool))


@pytest.mark.parametrize("decoder", ["ridge", "clip"])
def test_decoding_retrieves_planted_images_well_above_chance(decoder: str) -> None:
    embeddings, responses = planted()
    train, test = heldout_split(responses)
    result = decode_images(train, test, embeddings, decoder=decoder, epochs=10,
                           learning_rate=1e-2, seed=0)
    chance = result.chance.sel(k=1).item()
    assert chance == 1 / 60 and result.chance.sel(k=5).item() == 5 / 60
    assert 5 * chance < result.accuracy.sel(k=1).item() < 1
    assert result.accuracy.sel(k=5).item() > result.accuracy.sel(k=1).item()
    assert result.attrs["n_train"] == 240 and result.attrs["n_test"] == 60
    assert sorted(result.image.values) == sorted(test.image.values)
    ranks = result["rank"].values
    assert result.accuracy.sel(k=5).item() == pytest.approx((ranks <= 5).mean())
    first = result.retrieved.sel(rank_position=1).values
    assert ((first == result.image.values) == (ranks == 1)).all()


def test_shuffled_labels_decode_at_chance() -> None:
    embeddings, responses = planted()
    train, test = heldout_split(responses)
    shuffled = embeddings.copy()
    shuffled["image"] = np.random.default_rng(1).permutation(embeddings.image.values)
    result = decode_images(train, test, shuffled)
    # 60 test images: chance top-1 is 1/60, top-5 is 1/12
    assert result.accuracy.sel(k=1).item() <= 3 / 60
    assert result.accuracy.sel(k=5).item() <= 0.2


def test_batches_from_a_loader_decode_as_the_entry() -> None:
    embeddings, responses = planted()
    train, test = heldout_split(responses)
    from_entry = decode_images(train, test, embeddings, alphas=[10.0])
    from_loader = decode_images(loader(train, 64), loader(test, 25), embeddings,
                                alphas=[10.0])
    np.testing.assert_array_equal(from_entry["rank"].values, from_loader["rank"].values)
    # repeated test responses of one image are averaged: one row per test image
    repeated = decode_images(loader(train, 64), loader(test, 25, repeats=2), embeddings,
                             alphas=[10.0])
    assert repeated.sizes["image"] == 60


def test_decoding_from_nest_data_torch_batches() -> None:
    """Training from the PyTorch pipeline: shuffled batches of nest_data.torch through a
    DataLoader, a new order every epoch."""
    from torch.utils.data import DataLoader

    from nest_data.torch import ResponseBatches

    embeddings, responses = planted()
    train, test = heldout_split(responses)
    batches = ResponseBatches(train, batch_size=64, seed=3)
    pipeline = DataLoader(batches, batch_size=None)
    ridge = decode_images(pipeline, test, embeddings, alphas=[10.0])
    from_entry = decode_images(train, test, embeddings, alphas=[10.0])
    # the same regression whatever the order of the training images
    assert abs(ridge.accuracy.sel(k=1).item() - from_entry.accuracy.sel(k=1).item()) <= 1 / 60
    assert ridge.attrs["n_train"] == 240
    clip = decode_images(pipeline, test, embeddings, decoder="clip", epochs=10,
                         learning_rate=1e-2)
    assert clip.accuracy.sel(k=1).item() > 5 * clip.chance.sel(k=1).item()
    assert batches.epoch == 9  # the decoder moved the pipeline to each epoch in turn


def test_held_out_images_are_never_trained_on() -> None:
    embeddings, responses = planted()
    train, test = heldout_split(responses)
    leaked = xr.concat([train, test.isel(image=[3])], dim="image")
    with pytest.raises(InputError, match="1 images are in both train and test.*"
                                         "never be trained on"):
        decode_images(leaked, test, embeddings)
    seen: list[str] = []
    epochs: list[int] = []

    class Recording:
        """Batches that record which images the decoder read for training, and the
        epochs it announced (as nest_data.torch.ResponseBatches takes them)."""

        def set_epoch(self, epoch: int) -> None:
            epochs.append(epoch)

        def __iter__(self) -> Iterator[dict[str, Any]]:
            for batch in loader(train, 64):
                seen.extend(batch["image"])
                yield batch

    decode_images(Recording(), test, embeddings, decoder="clip", epochs=3)
    assert set(seen) == set(train.image.values) and len(seen) == 4 * 240  # stats + 3 epochs
    assert not set(seen) & set(test.image.values)
    assert epochs == [0, 1, 2]


def test_bad_inputs() -> None:
    embeddings, responses = planted(n_images=40)
    train, test = heldout_split(responses, test=np.arange(10))
    with pytest.raises(InputError, match="decoder='mlp'.*'ridge', 'clip'"):
        decode_images(train, test, embeddings, decoder="mlp")
    with pytest.raises(InputError, match="1 images have no embedding.*img0039"):
        decode_images(train, test, embeddings.isel(image=slice(0, 39)))
    with pytest.raises(InputError, match="dict with 'responses'.*got \\['x'\\]"):
        decode_images([{"x": 1}], test, embeddings)
    with pytest.raises(InputError, match="give an entry .* or an iterable of batches"):
        decode_images(train.values, test, embeddings)
    narrow = test.isel(vertex=slice(0, 5))
    with pytest.raises(InputError, match="120 values per image, test responses 5"):
        decode_images(train, narrow, embeddings)
    with pytest.raises(InputError, match="10 test images cannot give top-20 accuracy"):
        decode_images(train, test, embeddings, top_k=(1, 20))
    nan = train.copy(data=np.where(np.arange(30)[:, None] == 2, np.nan, train.values))
    with pytest.raises(InputError, match="NaN or infinite"):
        decode_images(nan, test, embeddings)
    spent = iter(loader(train, 10))
    with pytest.raises(InputError, match="spent after one pass"):
        decode_images(spent, test, embeddings, decoder="clip", epochs=2)
    with pytest.raises(InputError, match="alphas=\\[0.0\\]: give positive"):
        decode_images(train, test, embeddings, alphas=[0.0])
    with pytest.raises(InputError, match="temperature=0 .* must be positive"):
        decode_images(train, test, embeddings, decoder="clip", temperature=0)


def test_image_embeddings_with_a_converted_backbone(tmp_path: Any) -> None:
    from safetensors.numpy import save_file

    from nest_data.synthetic import test_images, vit_b_32_state_dict

    path = tmp_path / "vit.safetensors"
    save_file(vit_b_32_state_dict(), str(path))
    images = test_images(3, 64)
    emb = image_embeddings(images, image_ids=["a", "b", "c"], backbone=path, block=12)
    assert emb.dims == ("image", "feature") and emb.shape == (3, 768)
    assert emb.image.values.tolist() == ["a", "b", "c"] and emb.dtype == np.float32
    assert np.isfinite(emb.values).all() and emb.values.std(0).mean() > 0
    first = image_embeddings(images[:1], image_ids=["a"], backbone=path, block=12)
    np.testing.assert_allclose(first.values[0], emb.values[0], rtol=1e-4, atol=1e-5)
    with pytest.raises(InputError, match="block=13: ViT-B/32 has blocks 1 to 12"):
        image_embeddings(images, backbone=path, block=13)
    with pytest.raises(InputError, match="give 3 distinct labels"):
        image_embeddings(images, image_ids=["a", "a", "b"], backbone=path)
