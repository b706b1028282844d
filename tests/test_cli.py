"""The ``nest-data`` command as people use command lines, run as the installed command.

Help in plain text that describes every argument, global options before or after the
command, ``--version``, errors in the command line's words (``--roi``, not ``roi=``), and the
``info``, ``dream`` and ``saliency`` commands with their outputs' safety rules.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import nest_data
from nest_data._cli import _parser, cli_message, main
from nest_data._output import WRITER_ATTR

COMMAND = Path(sys.executable).parent / "nest-data"


def nest_data_cli(*argv: str, env: dict[str, str] | None = None
                  ) -> subprocess.CompletedProcess[str]:
    """Run the installed ``nest-data`` command (the test session's caches and demo) in a
    terminal 80 columns wide."""
    assert COMMAND.is_file(), f"{COMMAND} missing: pip install -e . installs the command"
    return subprocess.run([str(COMMAND), *argv], capture_output=True, text=True, timeout=300,
                          env={**(os.environ if env is None else env), "COLUMNS": "80"})


def _commands(parser: argparse.ArgumentParser, prefix: str = ""
              ) -> dict[str, argparse.ArgumentParser]:
    """Every command's parser by its name (``convert ned``), walking nested commands."""
    out = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out[f"{prefix}{name}"] = sub
                out.update(_commands(sub, f"{prefix}{name} "))
    return out


# ------------------------------------------------------------------------------ help


def test_help_is_plain_text_with_first_steps() -> None:
    run = nest_data_cli("--help")
    assert run.returncode == 0, run.stderr
    assert "``" not in run.stdout and ":func:" not in run.stdout  # no reStructuredText
    assert "first steps:" in run.stdout and "nest-data demo" in run.stdout
    for name in ("demo", "encode", "info", "dream", "saliency", "cache", "catalog"):
        assert f"\n    {name} " in run.stdout
    cache = nest_data_cli("cache", "--help")
    assert cache.returncode == 0
    for text in (run.stdout, cache.stdout):  # a terminal's 80 columns
        assert max(map(len, text.splitlines())) <= 80
    info_line = next(line for line in cache.stdout.splitlines() if line.strip().startswith("info "))
    clear_line = next(line for line in cache.stdout.splitlines()
                      if line.strip().startswith("clear "))
    assert "where the cache is" in info_line and "MB" in info_line
    assert "delete every cached chunk" in clear_line


def test_every_command_describes_itself_and_its_arguments() -> None:
    commands = _commands(_parser())
    assert {"demo", "convert ned", "convert weights", "encode", "generate", "info", "dream",
            "saliency", "cache", "catalog", "mirror", "verify", "index"} <= set(commands)
    for name, parser in commands.items():
        assert parser.description, f"nest-data {name} --help has no description"
        assert "``" not in parser.format_help()  # formats, in plain text
        for action in parser._actions:
            if not isinstance(action, argparse._SubParsersAction):
                assert action.help, f"nest-data {name}: {action.dest} has no help"
    run = nest_data_cli("dream", "--help")
    assert "--png-dir DIR" in run.stdout and "pip install 'nest-data[encode]'" in run.stdout


# ----------------------------------------------------------------------- global options


def test_global_options_come_before_or_after_the_command(
        capsys: pytest.CaptureFixture[str]) -> None:
    parse = _parser().parse_args
    for argv in (["demo", "--no-progress", "-v"], ["--no-progress", "-v", "demo"],
                 ["--no-progress", "demo", "--verbose"], ["convert", "ned", "a", "b", "-v",
                                                         "--no-progress"]):
        args = parse(argv)
        assert args.no_progress is True and args.verbose is True, argv
    args = parse(["demo"])
    assert args.no_progress is False and args.verbose is False
    run = nest_data_cli("cache", "info", "--no-progress", "-v")
    assert run.returncode == 0, run.stderr
    assert os.environ["NEST_DATA_CACHE_DIR"] in run.stdout
    run = nest_data_cli("--version")
    assert (run.returncode, run.stdout.strip()) == (0, f"nest-data {nest_data.__version__}")
    with pytest.raises(SystemExit) as exited:
        main(["cache", "--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"nest-data {nest_data.__version__}"


# ---------------------------------------------------------------------------- errors


def test_cli_message_rewrites_keywords_it_has_flags_for() -> None:
    flags = {"roi": "--roi", "train_dataset": "--train-dataset", "location": "--location",
             "storage_option": "--storage-option", "overwrite": "--overwrite",
             "modality": "--modality"}
    assert cli_message("roi= is required for fmri/nsd/fwrf", flags) == \
        "--roi is required for fmri/nsd/fwrf"
    assert cli_message("or modality='eeg' for an EEG entry", flags) == \
        "or --modality eeg for an EEG entry"
    assert cli_message("train_dataset='a' / 'b' for a surface", flags) == \
        "--train-dataset a / b for a surface"
    assert cli_message("merged over storage_options=", flags) == "merged over --storage-option"
    assert cli_message("give --overwrite (overwrite=True) to replace it", flags) == \
        "give --overwrite to replace it"
    kept = ("call nest_data.encode(images, roi='V1', location='demo'); model= or "
            "chunks={'image': 4}; cache=False; --storage-option anon=true; a name='x y'")
    assert cli_message(kept, flags) == kept
    assert cli_message("keep roi=None", flags) == "keep roi=None"


def test_errors_name_the_flags_of_the_command(demo: Path, tmp_path: Path) -> None:
    image = tmp_path / "cat.png"
    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    no_roi = nest_data_cli("encode", str(image), "--subject", "1", "--location", "demo")
    assert no_roi.returncode == 2 and "Traceback" not in no_roi.stderr
    assert "no --roi given: pass --roi for an fMRI entry" in no_roi.stderr
    assert "--train-dataset nsd_fsaverage for a whole cortical surface" in no_roi.stderr
    assert "roi=" not in no_roi.stderr and "train_dataset=" not in no_roi.stderr

    unknown = nest_data_cli("info", "--imageset", "things", "--subject", "1", "--roi", "V9",
                            "--location", "demo")
    assert unknown.returncode == 2
    assert "unknown roi 'V9'" in unknown.stderr and "FFA-1" in unknown.stderr

    ambiguous = nest_data_cli("info", "--subject", "1", "--roi", "V1", "--location", "demo")
    assert ambiguous.returncode == 2
    assert "--imageset is required; valid values: " in ambiguous.stderr
    assert "imageset=" not in ambiguous.stderr

    env = {k: v for k, v in os.environ.items()
           if k not in ("NEST_DATA_ROOT", "NEST_DATA_LOCATION")}
    nowhere = nest_data_cli("encode", str(image), "--subject", "1", "--roi", "V1", env=env)
    assert nowhere.returncode == 2
    assert "no location given: pass --location (one of demo" in nowhere.stderr
    assert "--location demo" in nowhere.stderr and "location=" not in nowhere.stderr


# ----------------------------------------------------------------------------- info


def test_info_prints_an_entry_found_by_keys_or_by_its_store(
        demo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = {"imageset": "things", "subject": 1, "roi": "V1"}
    da = nest_data.open(**keys, location="demo")
    cat = nest_data.catalog()
    url = cat.location("demo").store(cat.resolve(**keys))
    by_keys = nest_data_cli("info", "--imageset", "things", "--subject", "1", "--roi", "V1",
                            "--location", "demo")
    assert by_keys.returncode == 0, by_keys.stderr
    out = by_keys.stdout
    assert f"where:     {url} (location demo)" in out
    assert f"image {da.sizes['image']:,} x voxel {da.sizes['voxel']:,}" in out
    assert f"checksum:  {da.attrs['sha256']} (responses)" in out
    assert "MB in its store" in out
    labels = out.split("  labels:\n")[1].splitlines()
    assert labels[0].split()[:2] == ["image", "concept"]
    first = [f"{v:.4g}" for v in da.ncsnr.values[:3]]
    assert re.search(rf" ncsnr +{re.escape(', '.join(first))}, \.\.\.$", "\n".join(labels),
                     re.MULTILINE)
    assert {line.split()[0] for line in labels if not line.startswith("      ")} == \
        {"image", "voxel"}  # a column of dims, then each label
    by_store = nest_data_cli("info", url)
    assert by_store.returncode == 0, by_store.stderr
    assert by_store.stdout.splitlines()[2:] == out.splitlines()[2:]  # all but where
    assert main(["info", url, "--subject", "1"]) == 2
    assert "give a STORE (folder or URL) or the entry's keys" in capsys.readouterr().err


def test_a_reader_that_leaves_early_is_no_error(demo: Path) -> None:
    """``nest-data info ... | head -1``: a closed pipe ends the command quietly (status 141,
    as a shell reports SIGPIPE), with no traceback."""
    read, write = os.pipe()
    os.close(read)  # every write to the pipe now fails: the reader is gone
    try:
        done = subprocess.run([str(COMMAND), "info", "--imageset", "things", "--subject", "1",
                               "--roi", "V1", "--location", "demo"], stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write)
    assert done.returncode == 141, done.stderr
    assert done.stderr == ""


# --------------------------------------------------------------------- dream, saliency


def test_dream_writes_pngs_and_the_tree_safely(demo: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from PIL import Image

    pngs, out = tmp_path / "pngs", tmp_path / "tree.nc"
    png = pngs / "dream_sub-01_FFA-1_0.png"
    pngs.mkdir()
    png.write_bytes(b"a file of mine")
    argv = ["dream", "--subject", "1", "--roi", "FFA-1", "--location", "demo", "--n", "1",
            "--steps", "1", "--size", "32", "--png-dir", str(pngs), "--out", str(out)]
    refused = nest_data_cli(*argv)
    assert refused.returncode == 2
    assert "did not write; give --overwrite to replace it" in refused.stderr
    assert png.read_bytes() == b"a file of mine" and not out.exists()
    run = nest_data_cli(*argv, "--overwrite")
    assert run.returncode == 0, run.stderr
    assert f"{png}\tobjective " in run.stdout
    with Image.open(png) as image:
        assert image.size == (32, 32) and image.text[WRITER_ATTR].startswith("nest-data")
        pixels = np.asarray(image)
    with xr.open_datatree(out) as tree:
        assert tree.attrs[WRITER_ATTR].startswith("nest-data")
        stored = tree["images"].values[0].transpose(1, 2, 0)
        np.testing.assert_array_equal(pixels, np.round(stored * 255).astype(np.uint8))
        assert tree["FFA-1"]["responses"].dims == ("image", "voxel")


def test_saliency_writes_one_png_per_image(demo: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("matplotlib")
    from PIL import Image

    from nest_data.synthetic import test_images

    files = []
    for name, pixels in zip(("face", "house"), test_images(2, 64, seed=3), strict=True):
        files.append(tmp_path / f"{name}.png")
        Image.fromarray(pixels).save(files[-1])
    out = tmp_path / "maps.zarr"
    run = nest_data_cli("saliency", *map(str, files), "--subject", "1", "--roi", "FFA-1",
                        "--location", "demo", "--steps", "4", "--png-dir", str(tmp_path / "m"),
                        "--out", str(out))
    assert run.returncode == 0, run.stderr
    with xr.open_zarr(out) as maps:
        assert list(maps.image.values) == ["face.png", "house.png"]
        assert maps.saliency.shape == (2, 3, 64, 64)
        scores = maps.score.values
    for name, score in zip(("face", "house"), scores, strict=True):
        png = tmp_path / "m" / f"saliency_{name}.png"
        assert f"{png}\tscore {float(score):+.6g}" in run.stdout
        with Image.open(png) as image:
            assert image.text[WRITER_ATTR].startswith("nest-data") and image.size[0] > 400
