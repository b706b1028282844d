"""The documentation site: built with warnings as errors, and its pages' examples run.

``docs/`` is copied (with the figures it shows) into a temporary folder and built there, so
a build leaves nothing in the working tree.  The html build reads every page and writes the
doctrees; the doctest build reuses them and runs every ``{doctest}`` block of the pages
against the demo (the session's ``demo`` fixture builds it in the session cache, which
the builds find through ``NEST_DATA_CACHE_DIR``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sphinx", reason="the docs extra is not installed")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, demo: Path) -> Path:
    """A copy of docs/ and the figures it shows, outside the working tree."""
    root = tmp_path_factory.mktemp("site")
    shutil.copytree(REPO / "docs", root / "docs",
                    ignore=shutil.ignore_patterns("_build", "generated"))
    shutil.copytree(REPO / "examples" / "figures", root / "examples" / "figures")
    return root


def sphinx(site: Path, builder: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", builder,
           "-d", str(site / "doctrees"), str(site / "docs"), str(site / builder)]
    return subprocess.run(cmd, cwd=site, env=dict(os.environ), capture_output=True,
                          text=True, timeout=240, check=False)


@pytest.fixture(scope="module")
def html(site: Path) -> Path:
    result = sphinx(site, "html")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    return site / "html"


def test_html_builds_without_warnings(html: Path) -> None:
    for page in ("index", "getting-started", "coming-from-ned", "api", "benchmarks",
                 "internals", "changelog", "guide/integrity", "guide/remote"):
        assert (html / f"{page}.html").is_file(), page
    # the API reference is generated from the docstrings
    text = (html / "generated" / "nest_data.open.html").read_text()
    assert "Open one entry of the NEST collection" in text
    assert (html / "generated" / "nest_data.errors.UnknownKeyError.html").is_file()
    assert (html / "_images" / "top_images.png").is_file()


def test_page_examples_run_on_the_demo(html: Path, site: Path) -> None:
    result = sphinx(site, "doctest")
    report = (site / "doctest" / "output.txt").read_text()
    assert result.returncode == 0, report + result.stderr
    assert " 0 failures in tests" in report
    # guard against a build that ran no example at all
    n_tests = int(report.split(" tests\n")[0].split()[-1])
    assert n_tests >= 50, report


def test_api_reference_lists_every_public_name() -> None:
    """Every name of ``nest_data.__all__`` (and of the public subpackages) has its page."""
    import re

    import nest_data
    import nest_data.analysis
    import nest_data.errors
    import nest_data.gradients.objectives
    import nest_data.synthetic

    text = (REPO / "docs" / "api.md").read_text()
    listed: dict[str, set[str]] = {}
    for block in re.findall(r"```\{eval-rst\}\n(.*?)```", text, flags=re.S):
        module = re.search(r"\.\. currentmodule:: (\S+)", block)
        if module:
            current = module.group(1)
        names = re.findall(r"^   (\w+)$", block, flags=re.M)
        listed.setdefault(current, set()).update(names)
    errors = set(nest_data.errors.__all__)
    public = set(nest_data.__all__) - errors - {"__version__", "objectives"}
    assert public - listed["nest_data"] - set(nest_data.analysis.__all__) == set()
    assert set(nest_data.analysis.__all__) - {"RNC_CONDITIONS"} <= listed["nest_data.analysis"]
    assert errors <= listed["nest_data.errors"]
    objectives = set(nest_data.gradients.objectives.__all__)
    assert objectives <= listed["nest_data.gradients.objectives"]
    writers = {n for n in nest_data.synthetic.__all__ if callable(getattr(nest_data.synthetic, n))}
    assert writers <= listed["nest_data.synthetic"]
