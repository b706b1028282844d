"""Reading NEST's/BERG's encoder folders from a remote root (``s3://...``, ``gs://...``).

The weight converters read local files (pickles must be loaded from seekable files, and
their bytes are hashed for provenance).  For a remote root, :func:`staged_subjects` lists the
root once, then copies one subject's weight and metadata files at a time (plus the files
its model shares between subjects, such as NED's EEG scaler and PCA) into a temporary
folder with the root's layout, so each byte crosses the network once and the local disk
holds one subject's files at a time (about 1.5 GB for a real fsaverage subject).
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import fsspec

from nest_data._urls import validate_storage_options
from nest_data.errors import ConversionError

logger = logging.getLogger("nest_data")

__all__ = ["staged_subjects"]

#: A file's subject, in NEST's/BERG's names: ``weights_sub-01_roi-V1.pt``,
#: ``weights_subject-01.npy``, ``LinearRegression_param_sub-01.npy``, ``metadata_sub-01...``.
_SUBJECT = re.compile(r"_sub(?:ject)?-(\d+)")
_FOLDERS = ("encoding_models_weights", "metadata")


def staged_subjects(
    src: str, storage_options: Mapping[str, Any], *, modality: str | None = None,
    subjects: set[int] | None = None, pickles: bool = False,
) -> Iterator[tuple[int, Path]]:
    """Yield ``(subject, local root)`` with that subject's encoder files copied from ``src``.

    Parameters
    ----------
    src : str
        Remote root holding ``encoding_models/`` (NEST's or BERG's bucket, or a copy).
    storage_options : dict
        fsspec options for ``src`` (``{"anon": True}`` for the public buckets).
    modality : str, optional
        Copy only ``encoding_models/modality-<modality>/``.
    subjects : set of int, optional
        Copy only these subjects (default: every subject found).
    pickles : bool
        Copy the fwRF ``.pt`` files too (only when the caller trusts pickles).

    Raises
    ------
    ConversionError
        ``src`` holds no encoder weights (the message says what was listed).
    """
    validate_storage_options(src, dict(storage_options))
    fs, root = fsspec.core.url_to_fs(src, **storage_options)
    root = root.rstrip("/")
    base = f"{root}/encoding_models" + (f"/modality-{modality}" if modality else "")
    try:
        listed = fs.find(base)
    except FileNotFoundError:
        listed = []
    shared: list[str] = []
    by_subject: dict[int, list[str]] = {}
    skipped = 0
    for path in sorted(listed):
        rel = path[len(root) + 1:]
        if not any(f"/{folder}/" in f"/{rel}" for folder in _FOLDERS):
            continue  # accuracy plots, tutorials
        if rel.endswith(".pt") and not pickles:
            skipped += 1
            continue
        match = _SUBJECT.search(rel.rsplit("/", 1)[-1])
        if match is None:
            shared.append(rel)
        else:
            by_subject.setdefault(int(match[1]), []).append(rel)
    chosen = sorted(s for s in by_subject if not subjects or s in subjects)
    if not chosen:
        raise ConversionError(
            f"no encoder weights under {src}/encoding_models"
            + (f"/modality-{modality}" if modality else "")
            + (f" for subjects {sorted(subjects)}" if subjects else "")
            + f" (found subjects {sorted(by_subject) or 'none'}"
            + (f"; {skipped} fwRF .pt file(s) skipped: they are pickles, pass "
               "trust_pickles=True (--trust-pickles) to convert them" if skipped else "")
            + "); give the root of NEST's or BERG's bucket, e.g. "
            "s3://brain-encoding-response-generator with the source option anon=true")
    if skipped:
        logger.warning("skipping %d fwRF .pt file(s) under %s: they are pickles; pass "
                       "trust_pickles=True (--trust-pickles) to convert them too", skipped, src)
    for subject in chosen:
        files = by_subject[subject] + [rel for rel in shared
                                       if _same_model(rel, by_subject[subject])]
        with tempfile.TemporaryDirectory(prefix="nest-weights-") as tmp:
            logger.info("copying %d file(s) of subject %d from %s", len(files), subject, src)
            for rel in files:
                target = Path(tmp) / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                fs.get_file(f"{root}/{rel}", str(target))
            yield subject, Path(tmp)


def _same_model(shared: str, own: list[str]) -> bool:
    """Whether a shared file lies in the model folder of one of a subject's files."""
    model = shared.split("/encoding_models_weights/")[0].split("/metadata/")[0]
    return any(path.startswith(model + "/") for path in own)
