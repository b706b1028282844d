"""The miniature NED writer produces NED's exact formats with structured values."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from nest_data.converters._pickle import load_npy_dict
from nest_data.synthetic import (
    CHANNELS,
    NED_ROOT_NAMES,
    ROI_VOXELS_SUB01,
    TIMES,
    ned_file_paths,
    roi_voxel_count,
    write_ned,
)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fmri_file_format(ned_src: Path) -> None:
    h5, npy = ned_file_paths(ned_src, "fmri", "nsd", 1, "V1")
    with h5py.File(h5) as f:
        assert list(f) == ["synthetic_neural_responses"]
        dset = f["synthetic_neural_responses"]
        assert dset.dtype == np.float32
        assert dset.shape == (30, 1350)
        assert dset.chunks is None and dset.compression is None  # contiguous, h5py defaults
        values = dset[:]
    assert values.std() > 0.5 and np.unique(values).size > values.size // 2
    meta = np.load(npy, allow_pickle=True).item()  # NED's own way of reading it
    assert set(meta) == {"fmri", "encoding_models", "nsd_labels"}
    assert set(meta["fmri"]) == {"ncsnr", "roi_mask_volume", "fmri_affine"}
    mask = meta["fmri"]["roi_mask_volume"]
    assert mask.dtype == bool and mask.shape == (81, 104, 83) and mask.sum() == 1350
    assert meta["fmri"]["fmri_affine"].shape == (4, 4)
    acc = meta["encoding_models"]["encoding_accuracy"]
    assert set(acc) == {"r2", "noise_ceiling", "noise_normalized_encoding"}
    assert all(v.shape == (1350,) for v in acc.values())
    splits = meta["encoding_models"]["train_val_test_nsd_image_splits"]
    assert {k: v.shape for k, v in splits.items()} == {
        "train_img_num": (9000,), "val_img_num": (485,), "test_img_num": (515,)}
    assert meta["nsd_labels"]["subjectim"].shape == (8, 10000)
    assert meta["nsd_labels"]["masterordering"].shape == (1, 30000)  # loadmat's 2-D
    assert meta["nsd_labels"]["masterordering"].min() >= 0  # 0-based


@pytest.mark.parametrize(("imageset", "block", "keys"), [
    ("things", "things_labels", {"image_concept_index", "image_paths", "unique_id"}),
    ("imagenet_val", "imagenet_val_labels", {"label_number", "label_names"}),
])
def test_label_blocks(ned_src: Path, imageset: str, block: str, keys: set[str]) -> None:
    meta = load_npy_dict(ned_file_paths(ned_src, "fmri", imageset, 2, "FFA-1")[1])
    assert set(meta[block]) == keys
    assert f"{imageset}_labels" in meta and "nsd_labels" not in meta


def test_label_containers_are_neds(ned_src: Path) -> None:
    """Dicts where NED's creation scripts wrote dicts (int keys, str values), else arrays."""
    things = load_npy_dict(ned_file_paths(ned_src, "fmri", "things", 1, "V1")[1])[
        "things_labels"]
    index = things["image_concept_index"]
    assert isinstance(index, np.ndarray) and index.dtype == np.int64 and index.shape == (30,)
    paths, unique_id = things["image_paths"], things["unique_id"]
    assert type(paths) is dict and list(paths) == list(range(30))  # one key per image
    assert type(unique_id) is dict and len(unique_id) == 50  # one key per concept
    assert list(unique_id) == list(range(50))
    for table in (paths, unique_id):
        assert all(type(k) is int and type(v) is str for k, v in table.items())
    for i, path in paths.items():
        concept = unique_id[int(index[i])]
        assert re.fullmatch(rf"{concept}/{concept}_\d\d[a-z]\.jpg", path)
    numbers: dict[str, list[int]] = {}
    for path in paths.values():  # numbered 01, 02, ... within each concept
        numbers.setdefault(path.split("/")[0], []).append(int(path[-7:-5]))
    assert all(n == list(range(1, len(n) + 1)) for n in numbers.values())
    imagenet = load_npy_dict(ned_file_paths(ned_src, "fmri", "imagenet_val", 1, "V1")[1])[
        "imagenet_val_labels"]
    number, names = imagenet["label_number"], imagenet["label_names"]
    assert isinstance(number, np.ndarray) and number.dtype == np.int64 and number.shape == (30,)
    assert type(names) is dict and list(names) == list(range(1000))
    assert all(type(k) is int and type(v) is str for k, v in names.items())
    eeg = load_npy_dict(ned_file_paths(ned_src, "eeg", "things", 1)[1])["eeg"]
    assert type(eeg["ch_names"]) is list and isinstance(eeg["times"], np.ndarray)


def test_old_file_names(tmp_path: Path) -> None:
    kw = {"subjects": [1], "rois": ["V1"], "imagesets": ["imagenet_val"], "n_images": 3,
          "show_progress": False}
    write_ned(tmp_path / "old", names="old", **kw)
    write_ned(tmp_path / "new", **kw)
    assert sorted(p.name for p in (tmp_path / "old").rglob("*.*")) == [
        "synthetic_neural_responses_metadata_training_dataset-nsd_model-fwrf_imageset-"
        "imagenet_val_sub-01_roi-V1.npy",
        "synthetic_neural_responses_metadata_training_dataset-things_eeg_2_model-vit_b_32_"
        "imageset-imagenet_val_sub-01.npy",
        "synthetic_neural_responses_training_dataset-nsd_model-fwrf_imageset-imagenet_val_"
        "sub-01_roi-V1.h5",
        "synthetic_neural_responses_training_dataset-things_eeg_2_model-vit_b_32_imageset-"
        "imagenet_val_sub-01.h5"]
    for modality, roi in (("fmri", "V1"), ("eeg", None)):
        old = ned_file_paths(tmp_path / "old", modality, "imagenet_val", 1, roi, names="old")
        new = ned_file_paths(tmp_path / "new", modality, "imagenet_val", 1, roi)
        assert [_sha(p) for p in old] == [_sha(p) for p in new]  # same content, other names
        assert old[0].parent.relative_to(tmp_path / "old") == new[0].parent.relative_to(
            tmp_path / "new")


def test_eeg_file_format(ned_src: Path) -> None:
    h5, npy = ned_file_paths(ned_src, "eeg", "things", 1)
    with h5py.File(h5) as f:
        dset = f["synthetic_neural_responses"]
        assert dset.shape == (30, 4, 63, 140) and dset.chunks is None
        values = dset[:]
    meta = load_npy_dict(npy)
    assert list(meta["eeg"]["ch_names"]) == list(CHANNELS) and len(CHANNELS) == 63
    np.testing.assert_allclose(meta["eeg"]["times"], TIMES)
    assert TIMES[0] == -0.1 and TIMES[-1] == 0.595
    acc = meta["encoding_models"]["encoding_accuracy"]
    assert acc["correlation_single_repetitions"].shape == (4, 63, 140)
    assert acc["noise_ceiling_lower"].shape == (63, 140)
    splits = meta["encoding_models"]["train_test_things_image_splits"]
    assert len(splits["train_img_files"]) == 16540 and len(splits["test_img_files"]) == 200
    # Evoked structure: post-stimulus variance across images exceeds the baseline's.
    evoked = values.mean(axis=1)
    assert evoked[..., TIMES > 0.05].std(axis=0).mean() > evoked[..., TIMES < 0].std(
        axis=0).mean()


def test_sub01_uses_published_voxel_counts() -> None:
    assert sum(ROI_VOXELS_SUB01.values()) == 41962
    assert all(roi_voxel_count(1, r) == n for r, n in ROI_VOXELS_SUB01.items())
    assert [roi_voxel_count(s, "V1") for s in range(2, 9)] != [1350] * 7


def test_both_root_names_and_determinism(tmp_path: Path) -> None:
    kw = {"modalities": ["fmri"], "subjects": [3], "rois": ["OFA"], "imagesets": ["things"],
          "n_images": 7, "show_progress": False}
    a = write_ned(tmp_path / "a", root_name=NED_ROOT_NAMES[0], **kw)
    b = write_ned(tmp_path / "b", root_name=NED_ROOT_NAMES[1], **kw)
    c = write_ned(tmp_path / "c", seed=1, **kw)
    assert a.name == "pregenerated_insilico_neural_responses"
    assert b.name == "synthetic_neural_responses"
    files = [ned_file_paths(p.parent, "fmri", "things", 3, "OFA", p.name)[0] for p in (a, b, c)]
    with h5py.File(files[0]) as fa, h5py.File(files[1]) as fb, h5py.File(files[2]) as fc:
        va, vb, vc = (f["synthetic_neural_responses"][:] for f in (fa, fb, fc))
    np.testing.assert_array_equal(va, vb)
    assert not np.array_equal(va, vc)


def test_values_have_low_rank_structure_and_ignore_block_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A few latent image features drive all voxels; rows do not depend on how they are written."""
    import nest_data.synthetic.ned as ned_writer

    kw = {"modalities": ["fmri"], "subjects": [1], "rois": ["V1"], "imagesets": ["nsd"],
          "n_images": 300, "show_progress": False}
    write_ned(tmp_path / "big", **kw)
    monkeypatch.setattr(ned_writer, "_BLOCK_BYTES", 7 * 1350 * 4)  # 7 rows per block
    write_ned(tmp_path / "small", **kw)
    loaded = []
    for name in ("big", "small"):
        with h5py.File(ned_file_paths(tmp_path / name, "fmri", "nsd", 1, "V1")[0]) as f:
            loaded.append(f["synthetic_neural_responses"][:])
    np.testing.assert_array_equal(*loaded)
    centred = loaded[0] - loaded[0].mean(axis=0)
    spectrum = np.linalg.svd(centred, compute_uv=False) ** 2
    assert spectrum[:6].sum() / spectrum.sum() > 0.4  # pure noise would give ~6/300


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="root_name must be one of"):
        write_ned(tmp_path, root_name="ned")
    with pytest.raises(ValueError, match="unknown modality 'meg'"):
        write_ned(tmp_path, modalities=["meg"])
    with pytest.raises(ValueError, match=r"names must be one of \('new', 'old'\), not 'v1'"):
        write_ned(tmp_path, names="v1")
