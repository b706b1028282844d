"""NED -> Zarr conversion: exact values, complete metadata, atomic, resumable, verified."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import xarray as xr
import zarr

import nest_data
from nest_data._cli import main as cli
from nest_data._format import FORMAT_VERSION, chunk_rows
from nest_data._staging import STAGING_DIR
from nest_data.converters import convert_ned, discover_ned
from nest_data.converters._pickle import load_npy_dict
from nest_data.errors import ConversionError, UnknownKeyError
from nest_data.synthetic import CHANNELS, TIMES, ned_file_paths, write_ned


def _source(ned: Path, modality: str, imageset: str, subject: int, roi: str | None = None
            ) -> tuple[np.ndarray, dict]:
    h5, npy = ned_file_paths(ned, modality, imageset, subject, roi)
    with h5py.File(h5) as f:
        return f["synthetic_neural_responses"][:], load_npy_dict(npy)


def _listing(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).digest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("roi", ["V1", "lateral"])
def test_fmri_values_and_voxel_coords(ned_src: Path, collection: Path, roi: str) -> None:
    values, meta = _source(ned_src, "fmri", "nsd", 1, roi)
    da = nest_data.open(imageset="nsd", subject=1, roi=roi, location=str(collection))
    assert da.dims == ("image", "voxel") and da.dtype == np.float32 and da.name == "responses"
    got = da.values
    assert got.tobytes() == values.tobytes()  # bit-identical
    mask = meta["fmri"]["roi_mask_volume"]
    ijk = np.argwhere(mask)
    np.testing.assert_array_equal(np.c_[da.i.values, da.j.values, da.k.values], ijk)
    affine = meta["fmri"]["fmri_affine"]
    xyz = (np.c_[ijk, np.ones(len(ijk))] @ affine.T)[:, :3]
    np.testing.assert_allclose(np.c_[da.x.values, da.y.values, da.z.values], xyz, rtol=1e-6)
    np.testing.assert_array_equal(da.ncsnr.values, meta["fmri"]["ncsnr"])
    acc = meta["encoding_models"]["encoding_accuracy"]
    np.testing.assert_array_equal(da.r2.values, acc["r2"])
    np.testing.assert_array_equal(da.noise_ceiling.values, acc["noise_ceiling"])
    np.testing.assert_array_equal(da.explained_variance.values,
                                  acc["noise_normalized_encoding"])
    assert da.attrs["volume_shape"] == list(mask.shape)
    np.testing.assert_array_equal(np.array(da.attrs["affine"]), affine)
    assert {k: da.attrs[k] for k in ("modality", "train_dataset", "model", "imageset",
                                     "subject", "roi")} == {
        "modality": "fmri", "train_dataset": "nsd", "model": "fwrf", "imageset": "nsd",
        "subject": 1, "roi": roi}
    assert da.attrs["sha256"] == "sha256:" + hashlib.sha256(values.tobytes()).hexdigest()
    assert da.attrs["nan_count"] == 0
    files = [s["file"] for s in da.attrs["provenance"]["sources"]]
    assert files == [f"synthetic_neural_responses_sub-01_roi-{roi}.h5",
                     f"synthetic_neural_responses_metadata_sub-01_roi-{roi}.npy"]


def test_nsd_image_labels_and_encoder_splits(ned_src: Path, collection: Path) -> None:
    _, meta = _source(ned_src, "fmri", "nsd", 2, "FFA-1")
    da = nest_data.open(imageset="nsd", subject=2, roi="FFA-1", location=str(collection))
    subjectim = meta["nsd_labels"]["subjectim"]
    shared = set(subjectim[0]).intersection(*map(set, subjectim[1:]))
    np.testing.assert_array_equal(da.nsd_id.values, np.arange(30))
    np.testing.assert_array_equal(da.shared1000.values, [i in shared for i in range(30)])
    splits = meta["encoding_models"]["train_val_test_nsd_image_splits"]
    expected = ["test" if i in splits["test_img_num"] else "val" if i in splits["val_img_num"]
                else "train" if i in splits["train_img_num"] else "" for i in range(30)]
    assert list(da.split.values) == expected
    aux = nest_data.open_metadata(imageset="nsd", subject=2, roi="FFA-1",
                                  location=str(collection))
    for name in ("train_img_num", "val_img_num", "test_img_num"):
        np.testing.assert_array_equal(aux[name].values, splits[name])
    np.testing.assert_array_equal(aux["nsd_subjectim"].values, subjectim)
    masterordering = meta["nsd_labels"]["masterordering"]
    assert masterordering.shape == (1, 30000)  # as loadmat reads it and NED stored it
    np.testing.assert_array_equal(aux["nsd_masterordering"].values, masterordering[0])


def test_things_and_imagenet_labels(ned_src: Path, collection: Path) -> None:
    _, meta = _source(ned_src, "fmri", "things", 1, "V1")
    da = nest_data.open(imageset="things", subject=1, roi="V1", location=str(collection))
    labels = meta["things_labels"]
    paths = [labels["image_paths"][i] for i in range(30)]  # NED's dict, keyed by image
    assert list(da.path.values) == paths
    assert list(da.concept.values) == [p.split("/")[0] for p in paths]
    np.testing.assert_array_equal(da.concept_index.values, labels["image_concept_index"])
    assert list(da.unique_id.values) == [labels["unique_id"][c]  # NED's dict, keyed by concept
                                         for c in labels["image_concept_index"]]
    _, meta = _source(ned_src, "fmri", "imagenet_val", 1, "V1")
    da = nest_data.open(imageset="imagenet_val", subject=1, roi="V1", location=str(collection))
    number = meta["imagenet_val_labels"]["label_number"]
    np.testing.assert_array_equal(da.label_number.values, number)
    assert list(da.label_name.values) == [meta["imagenet_val_labels"]["label_names"][n]
                                          for n in number]


def test_label_fields_as_arrays_and_lists(ned_src: Path, collection: Path, tmp_path: Path
                                          ) -> None:
    """The converter reads label fields from lists and arrays as from NED's dicts."""
    src = tmp_path / "src"
    for imageset in ("things", "imagenet_val", "nsd"):
        _, npy = _copy_entry(ned_src, src, "V1", imageset)
        meta = load_npy_dict(npy)
        labels = meta[f"{imageset}_labels"]
        for name, value in labels.items():
            if isinstance(value, dict):
                values = [value[i] for i in range(len(value))]
                labels[name] = values if name == "image_paths" else np.array(values)
        if imageset == "nsd":
            labels["masterordering"] = labels["masterordering"][0]  # 1-D
            labels["subjectim"] = labels["subjectim"].astype(np.float64)  # loadmat's doubles
        else:
            index = "image_concept_index" if imageset == "things" else "label_number"
            labels[index] = labels[index].tolist()
        np.save(npy, np.asarray(meta, dtype=object), allow_pickle=True)
    assert len(convert_ned(src, tmp_path / "dest", workers=1).converted) == 3
    for imageset in ("things", "imagenet_val", "nsd"):
        keys = {"imageset": imageset, "subject": 1, "roi": "V1"}
        got = nest_data.open(location=str(tmp_path / "dest"), **keys)
        expected = nest_data.open(location=str(collection), **keys)
        assert set(got.coords) == set(expected.coords)
        for name in got.coords:
            np.testing.assert_array_equal(got[name].values, expected[name].values)
        aux = nest_data.open_metadata(location=str(tmp_path / "dest"), **keys)
        expected_aux = nest_data.open_metadata(location=str(collection), **keys)
        for name in expected_aux:
            np.testing.assert_array_equal(aux[name].values, expected_aux[name].values)


@pytest.mark.parametrize("modality", ["fmri", "eeg"])
def test_names_before_neds_rename_convert_alike(tmp_path: Path, modality: str) -> None:
    kw = {"modalities": [modality], "subjects": [1], "rois": ["V1"], "n_images": 5,
          "imagesets": ["things", "nsd"], "show_progress": False}
    write_ned(tmp_path / "new", **kw)
    old = write_ned(tmp_path / "old", names="old", **kw)
    roi = "V1" if modality == "fmri" else None
    h5, npy = ned_file_paths(old.parent, modality, "things", 1, roi, names="old")
    assert h5.is_file() and npy.is_file() and "_training_dataset-" in h5.name
    assert [s.h5 for s in discover_ned(old.parent) if s.entry.imageset == "things"] == [h5]
    for name in ("new", "old"):
        assert len(convert_ned(tmp_path / name, tmp_path / f"{name}-dest", workers=1
                               ).converted) == 2
    for imageset in ("things", "nsd"):
        keys = {"modality": modality, "imageset": imageset, "subject": 1, "roi": roi}
        new_da, old_da = (nest_data.open(location=str(tmp_path / f"{n}-dest"), **keys)
                          for n in ("new", "old"))
        xr.testing.assert_identical(new_da.drop_attrs(), old_da.drop_attrs())
        assert {k: v for k, v in new_da.attrs.items() if k != "provenance"} == {
            k: v for k, v in old_da.attrs.items() if k != "provenance"}
        old_files = [s["file"] for s in old_da.attrs["provenance"]["sources"]]
        assert old_files == [p.name for p in ned_file_paths(old.parent, modality, imageset, 1,
                                                              roi, names="old")]


def test_eeg_entry(ned_src: Path, collection: Path) -> None:
    values, meta = _source(ned_src, "eeg", "imagenet_val", 1)
    da = nest_data.open(modality="eeg", imageset="imagenet_val", subject="sub-01",
                        location=str(collection))
    assert da.dims == ("image", "repetition", "channel", "time")
    assert da.values.tobytes() == values.tobytes()
    assert list(da.channel.values) == list(CHANNELS)
    np.testing.assert_array_equal(da.time.values, TIMES)
    assert da.time.attrs["units"] == "s"
    np.testing.assert_array_equal(da.repetition.values, [1, 2, 3, 4])
    acc = meta["encoding_models"]["encoding_accuracy"]
    assert da.correlation_single_repetitions.dims == ("repetition", "channel", "time")
    np.testing.assert_array_equal(da.noise_ceiling_upper.values, acc["noise_ceiling_upper"])
    aux = nest_data.open_metadata(modality="eeg", imageset="imagenet_val", subject=1,
                                  location=str(collection))
    assert aux["train_img_files"].size == 16540


@pytest.mark.parametrize(("row_shape", "n"), [((1350,), 73000), ((7799,), 26107),
                                              ((4, 63, 140), 73000), ((165,), 50000)])
def test_chunks_hold_4_to_16_mb_along_image_only(row_shape: tuple[int, ...], n: int) -> None:
    rows = chunk_rows(4 * int(np.prod(row_shape)), n)
    assert 4e6 <= rows * 4 * np.prod(row_shape) <= 16e6


def test_store_layout(collection: Path) -> None:
    path = collection / nest_data.catalog().resolve(imageset="nsd", subject=1, roi="V1").path
    group = zarr.open_group(path, mode="r")
    array = group["responses"]
    assert group.metadata.zarr_format == 3
    # shards (one object each) of 24 images, all voxels: about 8 MB, rounded to whole inner
    # chunks of up to 128 KiB (24 rows of 1,350 float32)
    assert array.shards == array.chunks == (24, 1350)
    (crc,) = array.compressors  # raw values and their CRC-32C (see benchmarks/codecs.py)
    assert type(crc).__name__ == "Crc32cCodec"
    assert array.metadata.codecs[0].index_location.value == "end"
    assert meta_of(group)["format_version"] == FORMAT_VERSION
    assert type(group["ncsnr"].compressors[0]).__name__ == "ZstdCodec"
    assert group.metadata.consolidated_metadata is not None
    meta = group.attrs["nest_data"]
    assert meta["complete"] and set(meta["checksums"]) >= {"responses", "ncsnr", "i", "x"}


def meta_of(group: zarr.Group) -> dict:
    return dict(group.attrs["nest_data"])


def test_both_root_folder_names_are_found(tmp_path: Path) -> None:
    kw = {"modalities": ["fmri"], "subjects": [1], "imagesets": ["things"], "n_images": 4,
          "show_progress": False}
    write_ned(tmp_path, rois=["V1"], root_name="pregenerated_insilico_neural_responses", **kw)
    write_ned(tmp_path, rois=["V2"], root_name="synthetic_neural_responses", **kw)
    assert [s.entry.roi for s in discover_ned(tmp_path)] == ["V1", "V2"]
    assert [s.entry.roi for s in discover_ned(tmp_path / "synthetic_neural_responses")] == ["V2"]


def test_filters_and_parallel_equal_serial(ned_src: Path, collection: Path, tmp_path: Path
                                           ) -> None:
    report = convert_ned(ned_src, tmp_path, roi="FFA-1", subject=[2], imageset="nsd",
                         workers=1)
    assert report.converted == ["fmri/nsd/fwrf nsd sub-02 FFA-1"]
    rel = "modality-fmri/train_dataset-nsd/model-fwrf/imageset-nsd/sub-02_roi-FFA-1.zarr"
    serial = zarr.open_group(tmp_path / rel).attrs["nest_data"]["checksums"]
    parallel = zarr.open_group(collection / rel).attrs["nest_data"]["checksums"]
    assert serial == parallel
    with pytest.raises(UnknownKeyError, match="valid roi values: .*FFA-1"):
        convert_ned(ned_src, tmp_path, roi="FFA-3")


def _no_staged(dest: Path) -> bool:
    staged = dest / STAGING_DIR
    return not staged.exists() or not any(staged.iterdir())


def _copy_entry(ned_src: Path, dest: Path, roi: str = "V1", imageset: str = "things"
                ) -> tuple[Path, Path]:
    h5, npy = ned_file_paths(ned_src, "fmri", imageset, 1, roi)
    new_h5, new_npy = ned_file_paths(dest, "fmri", imageset, 1, roi)
    new_h5.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(h5, new_h5)
    shutil.copy(npy, new_npy)
    return new_h5, new_npy


def test_truncated_source_is_named_and_dest_untouched(ned_src: Path, tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    _copy_entry(ned_src, src, "V1")
    h5, _ = _copy_entry(ned_src, src, "FFA-1")
    convert_ned(src, dest, roi="V1", workers=1)
    before = _listing(dest)
    h5.write_bytes(h5.read_bytes()[: h5.stat().st_size // 2])
    with pytest.raises(ConversionError) as err:
        convert_ned(src, dest, workers=1)
    message = str(err.value)
    assert str(h5) in message and "truncated or damaged" in message and "re-download" in message
    after = _listing(dest)
    assert {k: v for k, v in after.items() if STAGING_DIR not in k} == {
        k: v for k, v in before.items() if STAGING_DIR not in k}
    assert _no_staged(dest)


def test_wrong_shape_source_is_rejected(ned_src: Path, tmp_path: Path) -> None:
    h5, _ = _copy_entry(ned_src, tmp_path / "src")
    with h5py.File(h5, "w") as f:
        f.create_dataset("synthetic_neural_responses", data=np.zeros((30, 1349), "float32"))
    with pytest.raises(ConversionError, match=r"1349 voxels but roi_mask_volume .* has 1350"):
        convert_ned(tmp_path / "src", tmp_path / "dest", workers=1)
    assert not (tmp_path / "dest" / "modality-fmri").exists()


def test_untrusted_pickle_is_refused(ned_src: Path, tmp_path: Path) -> None:
    _, npy = _copy_entry(ned_src, tmp_path / "src")

    class Evil:
        def __reduce__(self) -> tuple:
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    np.save(npy, np.asarray({"fmri": Evil()}, dtype=object), allow_pickle=True)
    with pytest.raises(ConversionError, match="refusing to load"):
        convert_ned(tmp_path / "src", tmp_path / "dest", workers=1)
    assert not (tmp_path / "pwned").exists()


def test_resume_skips_complete_and_redoes_damaged(ned_src: Path, tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    _copy_entry(ned_src, src, "V1")
    _copy_entry(ned_src, src, "FFA-1")
    first = convert_ned(src, dest, workers=1)
    assert len(first.converted) == 2
    again = convert_ned(src, dest, workers=1)
    assert again.converted == [] and len(again.skipped) == 2
    chunk = dest / ("modality-fmri/train_dataset-nsd/model-fwrf/imageset-things/"
                    "sub-01_roi-V1.zarr/responses/c/0/0")
    chunk.write_bytes(chunk.read_bytes()[:-8] + bytes(8))
    third = convert_ned(src, dest, workers=1)
    assert third.converted == ["fmri/nsd/fwrf things sub-01 V1"]
    assert nest_data.verify(dest).ok


def _kill_once_writing(src: Path, dest: Path, *, workers: int, processes: Any = None
                       ) -> list[Any]:
    """Run ``convert_ned`` in a child; SIGKILL it once chunks are being written.

    With ``processes`` (psutil), wait until ``workers`` worker processes exist too and
    return them (as they were before the kill).
    """
    code = ("import sys; from nest_data.converters import convert_ned; "
            f"convert_ned(sys.argv[1], sys.argv[2], workers={workers}, show_progress=False)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(src), str(dest)])
    staged = dest / STAGING_DIR
    deadline = time.monotonic() + 120
    children: list[Any] = []
    while time.monotonic() < deadline:
        if staged.is_dir() and list(staged.glob("*/responses/c/*")):
            if processes is None:
                break
            children = processes.Process(proc.pid).children(recursive=True)
            if len(children) >= workers:
                break
        time.sleep(0.01)
    else:
        proc.kill()
        pytest.fail("the conversion never started writing chunks")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    return children


def test_killed_conversion_leaves_nothing_visible_then_resumes(ned_src: Path, tmp_path: Path
                                                               ) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    write_ned(src, modalities=["fmri"], subjects=[1], rois=["lateral"], imagesets=["things"],
              n_images=4000, show_progress=False)  # 125 MB: takes a while to convert
    _kill_once_writing(src, dest, workers=1)
    assert not (dest / "modality-fmri").exists()
    with pytest.raises(nest_data.StoreNotFoundError):
        nest_data.open(imageset="things", subject=1, roi="lateral", location=str(dest))
    report = convert_ned(src, dest, workers=1)
    assert len(report.converted) == 1
    assert _no_staged(dest)  # the partial store was cleaned up
    assert nest_data.verify(dest).ok


def test_verify_names_tampered_chunk_and_cli_exit_codes(
    ned_src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    _copy_entry(ned_src, src)
    assert cli(["convert", "ned", str(src), str(dest), "--workers", "1"]) == 0
    assert "1 converted" in capsys.readouterr().out
    assert cli(["verify", str(dest)]) == 0
    assert "all checksums match" in capsys.readouterr().out
    store = dest / "modality-fmri/train_dataset-nsd/model-fwrf/imageset-things/sub-01_roi-V1.zarr"
    ncsnr = store / "ncsnr" / "c" / "0"
    raw = zarr.open_group(store)["ncsnr"][:]
    raw[3] += 1
    zarr.open_group(store, mode="r+")["ncsnr"][:] = raw  # re-encoded, but wrong values
    problems = nest_data.verify(dest).problems
    assert len(problems) == 1 and problems[0].array == "ncsnr"
    assert ncsnr.exists()
    chunk = store / "responses" / "c" / "0" / "0"
    chunk.write_bytes(b"garbage")
    problems = nest_data.verify(dest).problems
    assert [p.array for p in problems] == ["ncsnr", "responses"]
    assert problems[1].detail.startswith("object responses/c/0/0 (images 0-23) has checksum")
    assert cli(["verify", str(dest)]) == 1
    out = capsys.readouterr().out
    assert "MISMATCH" in out and "responses/c/0/0" in out and "2 problem(s)" in out


@pytest.mark.parametrize("kind", ["user folder", "plain file", "foreign zarr group"])
def test_never_replaces_what_is_not_ours(ned_src: Path, tmp_path: Path, kind: str) -> None:
    from nest_data.errors import ConversionError

    path = nest_data.catalog().resolve(imageset="things", subject=1, roi="V1").path
    target = tmp_path / path
    target.parent.mkdir(parents=True)
    if kind == "plain file":
        target.write_text("my notes")
        keep = {target: "my notes"}
    else:
        target.mkdir()
        name, text = (("zarr.json", '{"zarr_format": 3, "node_type": "group", '
                       '"attributes": {"mine": 1}}') if kind == "foreign zarr group"
                      else ("thesis.txt", "years of work"))
        (target / name).write_text(text)
        keep = {target / name: text}
    with pytest.raises(ConversionError, match=f"{re.escape(str(target))} exists and is a "
                                              ".*never deletes anything else"):
        convert_ned(ned_src, tmp_path, imageset="things", subject=1, roi="V1", workers=1,
                    overwrite=True, show_progress=False)
    for file, text in keep.items():
        assert file.read_text() == text


def test_destination_that_is_a_file_or_unwritable(ned_src: Path, tmp_path: Path) -> None:
    from nest_data.errors import TargetExistsError

    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(TargetExistsError, match=f"the destination {afile} is a file, not a "
                                                "folder; give a folder"):
        convert_ned(ned_src, afile, roi="V1", subject=1, imageset="things", workers=1)
    assert afile.read_text() == "x"
    with pytest.raises(TargetExistsError, match="cannot write in the destination /proc/nest"):
        convert_ned(ned_src, "/proc/nest", roi="V1", subject=1, imageset="things", workers=1)


def test_workers_stop_when_the_parent_is_killed(tmp_path: Path) -> None:
    """kill -9 of a parallel conversion: its workers exit; nothing more becomes visible."""
    psutil = pytest.importorskip("psutil")
    src, dest = tmp_path / "src", tmp_path / "dest"
    write_ned(src, modalities=["fmri"], subjects=[1, 2], rois=["lateral", "ventral"],
              imagesets=["things"], n_images=4000, show_progress=False)  # 4 entries, ~500 MB
    workers = _kill_once_writing(src, dest, workers=2, processes=psutil)
    visible = sorted(p.parent for p in dest.rglob("*.zarr/zarr.json") if STAGING_DIR not in
                     p.as_posix())
    _, alive = psutil.wait_procs(workers, timeout=20)
    assert not alive, f"workers still running after their parent died: {alive}"
    time.sleep(1)
    after = sorted(p.parent for p in dest.rglob("*.zarr/zarr.json") if STAGING_DIR not in
                   p.as_posix())
    assert after == visible  # nothing was committed once the parent was gone
    report = convert_ned(src, dest, workers=1, show_progress=False)
    assert len(report.converted) + len(report.skipped) == 4 and nest_data.verify(dest).ok
