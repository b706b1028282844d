"""The catalog as tables: a pandas listing and an intake-esm collection."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from nest_data._catalog.schema import KEYS, Entry, ModelSpec, Root
from nest_data._redact import redact_url, without_credentials
from nest_data.errors import LocationError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import pandas as pd

logger = logging.getLogger("nest_data")


def listing(models: Sequence[ModelSpec], imagesets: Mapping[str, Mapping[str, object]],
            entries: Sequence[Entry]) -> pd.DataFrame:
    """One row per entry: its keys, path, dims, image and voxel counts."""
    import pandas as pd

    specs = {(m.modality, m.train_dataset, m.model): m for m in models}
    rows = []
    for e in entries:
        spec = specs[(e.modality, e.train_dataset, e.model)]
        n_voxels = spec.n_voxels.get(e.subject, {}).get(e.roi or "") if e.roi else None
        rows.append({**e.key, "path": e.path, "dims": ",".join(e.dims),
                     "n_images": imagesets.get(e.imageset, {}).get("n_images"),
                     "n_voxels": n_voxels})
    df = pd.DataFrame(rows, columns=[*KEYS, "path", "dims", "n_images", "n_voxels"])
    return df.astype({"n_voxels": "Int64", "n_images": "Int64"})


def write_intake_esm(df: pd.DataFrame, where: Root, directory: str | os.PathLike[str],
                     stem: str, description: str) -> Path:
    """Write an intake-esm collection (``stem.json`` and ``stem.csv``) of a listing.

    Credentials are never written: the storage options that hold them are left out of the
    JSON, whose description names them and says to pass them to ``to_dataset_dict``; a root
    URL that carries one (``user:password@``, a signed query) is refused.

    A cortical-surface store (dims ``image, vertex``) is listed once per subject, as the
    whole surface (``roi`` ``"none"``), however many of its ROIs the listing holds:
    intake-esm opens every row with the same keywords, so a row cannot select an ROI's
    vertices, and a row labelled with an ROI would load the whole surface.  An ROI is
    selected after opening, with the vertex positions the store keeps in its ``encoder``
    group (``roi-<ROI>``), or with ``xr.open_dataset(path, engine="nest", roi=...)``.
    """
    root = where.url
    if redact_url(root) != root:
        raise LocationError(
            f"the location's URL {redact_url(root)} carries a credential (a password or a "
            "signature), which an intake-esm export would write into every path of its CSV; "
            "give the URL without it and the credential in storage_options (e.g. headers="
            "{'Authorization': ...} or auth=), which exports never write")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    surface = df["dims"].str.split(",").map(lambda dims: "vertex" in dims).astype(bool)
    df = _whole_surfaces(df, surface).drop(columns=["dims", "n_images", "n_voxels"])
    surface = bool(surface.any())
    df["roi"] = df["roi"].fillna("none")
    df["variable"] = "responses"
    if "://" not in root:  # intake-esm always passes storage_options, which zarr
        root = Path(root).absolute().as_uri()  # accepts for URLs only
    df["path"] = [root.rstrip("/") + "/" + p for p in df["path"]]
    df.to_csv(out / f"{stem}.csv", index=False)
    description = f"{description}, location {root}"
    if surface:
        description += ("; a cortical-surface store is one row per subject (the whole "
                        "surface): select an ROI's vertices with ds.isel(vertex=xr.open_zarr("
                        "path, group='encoder')['roi-<ROI>'].values)")
    options, left_out = without_credentials(where.storage_options)
    if left_out:
        description += (f"; the storage options {', '.join(left_out)} hold credentials and "
                        "are not stored here: pass them when opening, "
                        "to_dataset_dict(storage_options={...})")
        logger.info("intake-esm export %s: left out the credentials %s of the storage "
                    "options; they must be passed to to_dataset_dict(storage_options=...)",
                    stem, ", ".join(left_out))
    spec = {
        "esmcat_version": "0.1.0",
        "id": stem,
        "description": description,
        "catalog_file": f"{stem}.csv",
        "attributes": [{"column_name": k, "vocabulary": ""} for k in KEYS],
        "assets": {"column_name": "path", "format": "zarr"},
        "aggregation_control": {
            "variable_column_name": "variable",
            "groupby_attrs": list(KEYS),
            "aggregations": [],
        },
    }
    if options:
        spec["storage_options"] = options
    if left_out:
        spec["storage_options_to_supply"] = left_out
    path = out / f"{stem}.json"
    path.write_text(json.dumps(spec, indent=2))
    return path


def _whole_surfaces(df: pd.DataFrame, surface: pd.Series) -> pd.DataFrame:
    """The listing with each ROI of a cortical-surface store (``surface``: its dims hold
    ``vertex``) replaced by the store's whole surface, once (they all name the one store)."""
    rois = surface & df["roi"].notna()
    if not rois.any():
        return df
    logger.info("intake-esm export: %d surface ROI entries listed as their whole-surface "
                "stores (an ROI is selected after opening)", int(rois.sum()))
    out = df.copy()
    out.loc[rois, "roi"] = None
    out.loc[rois, "n_voxels"] = None
    return out.drop_duplicates(subset=["path", "roi"]).reset_index(drop=True)
