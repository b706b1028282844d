"""Configuration resolved at call time: cache directory, data root, progress bars.

Lookup order, documented once (README "Configuration"):

1. the function argument (``location=``, ``cache_dir=``, ``show_progress=``);
2. the environment variable (``NEST_DATA_LOCATION``, ``NEST_DATA_ROOT``,
   ``NEST_DATA_CACHE_DIR``, ``NEST_DATA_PROGRESS``);
3. the default: ``platformdirs.user_cache_dir("nest-data")`` for the cache, progress bars on.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import platformdirs

logger = logging.getLogger("nest_data")

ENV_ROOT = "NEST_DATA_ROOT"
ENV_LOCATION = "NEST_DATA_LOCATION"
ENV_CACHE_DIR = "NEST_DATA_CACHE_DIR"
ENV_PROGRESS = "NEST_DATA_PROGRESS"
ENV_CACHE = "NEST_DATA_CACHE"
ENV_VERIFY = "NEST_DATA_VERIFY"


def cache_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """Return the nest-data cache directory (argument, then env var, then platform default)."""
    if path is not None:
        return Path(path)
    env = os.environ.get(ENV_CACHE_DIR)
    if env:
        return Path(env)
    return Path(platformdirs.user_cache_dir("nest-data"))


def flag(value: bool | None, env: str, default: bool = False) -> bool:
    """Resolve an on/off setting: the argument, then the environment variable, then default."""
    if value is not None:
        return value
    text = os.environ.get(env)
    if text is None or not text.strip():
        return default
    return text.strip().lower() not in {"0", "false", "no", "off"}


def show_progress(value: bool | None) -> bool:
    """Resolve whether to show progress bars (argument, then ``NEST_DATA_PROGRESS``, then on)."""
    return flag(value, ENV_PROGRESS, default=True)
