"""A wheel built from the repo, installed in a fresh venv, opens the demo data."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(600)
def test_wheel_installs_and_opens_demo(demo: Path, tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path / "dist"), str(ROOT)], check=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("nest_data-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, timeout=300)
    # Dependencies come from this interpreter's site-packages, put on PYTHONPATH (which does
    # not run .pth files, so the editable install of the source tree stays invisible).
    env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"],
           "NEST_DATA_CACHE_DIR": str(demo.parent)}
    code = (
        "import nest_data, nest_data.converters;"
        f"assert 'site-packages' in nest_data.__file__ and {str(ROOT)!r} not in "
        "nest_data.__file__, nest_data.__file__;"
        "da = nest_data.open(imageset='things', subject=1, roi='V1', location='demo');"
        "print(nest_data.__file__, da.shape, len(nest_data.catalog()))"
    )
    run = subprocess.run([str(python), "-c", code], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert str(env_dir) in run.stdout and "(24, 1350) 1350" in run.stdout
