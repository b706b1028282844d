"""What the example scripts share: their common options, the demo, and writing the figure.

Each script in this folder imports it as ``import _example`` (Python puts a script's own
folder first on ``sys.path``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import nest_data

logger = logging.getLogger("examples")


def parser(doc: str | None, *, location: str | None = "where the stores are"
           ) -> argparse.ArgumentParser:
    """The script's parser, described by the first line of ``doc``, with ``--out`` (the
    figure's folder) and, unless ``location`` is None, ``--location`` (default: the demo;
    ``location`` is its help)."""
    out = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    out.add_argument("--out", type=Path, default=Path("."), help="folder for the PNG")
    if location is not None:
        out.add_argument("--location", default="demo", help=location)
    return out


def start(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``, log INFO messages to stderr, and build the demo when it is used."""
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if getattr(args, "location", "demo") == "demo":
        nest_data.build_demo()
    return args


def demo_note(args: argparse.Namespace, what: str = "synthetic values", sep: str = " ") -> str:
    """``" (demo: ...)"`` for a title when the script runs on the demo, else nothing."""
    return f"{sep}(demo: {what})" if args.location == "demo" else ""


def save(fig: Any, path: Path, **savefig: Any) -> Path:
    """Write ``fig`` to ``path`` (its folder made if needed), close it, log and return the
    path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, **savefig)
    plt.close(fig)
    logger.info("wrote %s", path)
    return path
