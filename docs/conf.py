"""Sphinx configuration of the nest-data documentation.

Why Sphinx: the libraries nest-data builds on and sits beside (xarray, zarr-python, numpy,
pooch) document themselves with it, so their users know the layout, and our docstrings are
numpydoc, which Sphinx renders natively (numpydoc is numpy's own extension). Pages are
Markdown (MyST); the build reads nothing from the network. The API reference is generated
from the docstrings (autodoc + autosummary); the pages' examples run as doctests against
the demo (``sphinx-build -b doctest docs OUT``, run by ``tests/test_docs.py``).

Build: ``pip install -e ".[docs]" && sphinx-build -W docs docs/_build/html``.
"""

from __future__ import annotations

import nest_data

project = "nest-data"
author = "nest-data developers"
copyright = "nest-data developers"
release = nest_data.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_parser",
    "numpydoc",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.doctest",
    "sphinx.ext.viewcode",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
templates_path = ["_templates"]
exclude_patterns = ["_build", "_templates", "**/.ipynb_checkpoints"]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# API reference: one page per public name, written by autosummary into api/generated/.
autosummary_generate = True
autosummary_imported_members = True
autodoc_typehints = "none"  # numpydoc's Parameters sections carry the types
autodoc_default_options = {"members": False}
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# Docstring examples already run under pytest --doctest-modules; the doctest builder runs
# only the pages' own ``{doctest}`` blocks (against the demo, location="demo").
doctest_test_doctest_blocks = ""
doctest_global_setup = """
import numpy as np
import nest_data
"""

html_theme = "furo"
html_title = f"nest-data {release}"
html_static_path: list[str] = []
