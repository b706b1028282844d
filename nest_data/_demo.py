"""The embedded demo: a synthetic miniature of the whole collection, and the main job on it."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from nest_data import _config
from nest_data._catalog import Catalog, Entry
from nest_data._format import FORMAT_VERSION
from nest_data._index import INDEX_FILE, write_index
from nest_data._locks import writer_lock
from nest_data._open import open as open_entry
from nest_data._staging import make_root
from nest_data._urls import is_local
from nest_data.analysis import top_images
from nest_data.errors import InputError, NestDataError, StoreNotFoundError

logger = logging.getLogger("nest_data")

DEMO_IMAGES = 24
#: The most images per image set the demo builds (about 6 MB of stores per image): it is a
#: miniature; ``nest-data generate`` writes stores of any size.
DEMO_MAX_IMAGES = 1000
DEMO_SEED = 0
#: Seconds a demo build waits for another process building the default demo to finish.
DEMO_BUILD_WAIT_S = 900.0
_MARKER = ".nest-data-demo.json"
SYNTHETIC_NOTE = ("The demo's numbers are SYNTHETIC: made by nest-data's miniature NED writer "
                  "in NED's exact file formats, not NEST encoder outputs; its encoders (fwRF, "
                  "fsaverage) are random weights in NEST's and BERG's formats.")
#: The subject whose encoders the demo holds, and whose fsaverage surface store it generates
#: (on its 'things' images).
SURFACE_SUBJECT = 1
#: The ROIs of subject 1 whose (random) fwRF weights the demo holds, for ``encode``,
#: ``generate`` and the optimisation of images on ``location="demo"``: those the examples
#: use (``lateral`` is one of NEST's two-part encoders).
DEMO_FWRF_ROIS = ("V1", "V2", "FFA-1", "PPA", "lateral")
#: The subjects whose (random) EEG encoders the demo holds, in BERG's layout.
DEMO_EEG_SUBJECTS = (1, 3)

__all__ = ["DemoResult", "build_demo", "demo_root", "plot_roi_summary", "plot_surface_map",
           "run_demo"]


def demo_root(cache_dir: str | Path | None = None) -> Path:
    """Where the demo collection lives: ``<cache dir>/demo`` (see ``NEST_DATA_CACHE_DIR``)."""
    return _config.cache_dir(cache_dir) / "demo"


@_config.progress_option
def build_demo(
    *,
    n_images: int | None = None,
    rebuild: bool = False,
    workers: int | None = None,
    show_progress: bool | None = None,
    cache_dir: str | Path | None = None,
    dest: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> Path | str:
    """Build the demo collection (every fMRI subject x ROI and EEG subject, synthetic).

    Writes a miniature NED folder with :func:`nest_data.synthetic.write_ned` and converts it
    with the NED converter, so the demo exercises the same path as real data.  With torch
    installed (``nest-data[encode]``), it also converts a synthetic fsaverage encoder of
    subject 1 and a random ViT-B/32 written in BERG's and torchvision's formats, and
    generates that subject's whole-surface store on synthetic images (the ``things`` image
    set of the demo), as ``nest-data generate`` does; converts random fwRF weights of
    subject 1 in NEST's ``.pt`` format for :data:`DEMO_FWRF_ROIS` and random EEG encoders of
    :data:`DEMO_EEG_SUBJECTS` in BERG's ``.npy`` layout; so every model
    (:func:`demo_encoders` lists them) answers :func:`nest_data.encode`,
    ``nest-data generate``, :func:`nest_data.dream` and :func:`nest_data.saliency` for new
    images on ``location="demo"``, and asking for an encoder it lacks names the ones it
    holds.  About 1.1 GB, built in one to two minutes on two cores.  Does nothing
    when the demo is already built (unless ``rebuild``).  One build at a time: a build of the
    default demo waits (up to :data:`DEMO_BUILD_WAIT_S`) for another process building it,
    then uses what that built; a build into ``dest`` is refused while another nest-data
    writer writes there.

    Parameters
    ----------
    n_images : int, optional
        Images per image set, 1 to :data:`DEMO_MAX_IMAGES`: a demo built with another
        number is built again.  Default: any complete demo is used as it is; a new one has
        :data:`DEMO_IMAGES`.
    rebuild : bool
        Build again even if a complete demo exists.
    workers : int, optional
        Conversion processes (a positive number).
    show_progress : bool, optional
        Progress bars.
    cache_dir : path, optional
        Cache directory (default: ``NEST_DATA_CACHE_DIR``, then the platform cache).
    dest : str, optional
        Build the demo somewhere else than the cache: a folder or a remote URL (``s3://``,
        ``gs://``), to try publishing a collection.  Always builds (no reuse check).
    storage_options : dict, optional
        fsspec options for a remote ``dest``.

    Returns
    -------
    pathlib.Path or str
        The demo root (``location="demo"`` reaches the default one), or ``dest``.

    Raises
    ------
    InputError
        ``n_images`` or ``workers`` out of range, or storage options for a local ``dest``;
        checked before anything is written.
    TargetExistsError
        ``dest`` is a file, or a folder that cannot be created or written to.
    WriterLockError
        Another process is writing to ``dest``, or is still building the default demo after
        :data:`DEMO_BUILD_WAIT_S`; the message names it.

    Examples
    --------
    >>> import nest_data
    >>> nest_data.build_demo(show_progress=False).name
    'demo'
    >>> nest_data.build_demo(n_images=0, dest="/tmp/nowhere")
    Traceback (most recent call last):
    ...
    nest_data.errors.InputError: n_images=0: the demo builds 1 to 1000 images per image set; ...
    """
    from nest_data.converters.ned import convert_ned
    from nest_data.synthetic import write_ned

    any_size = n_images is None
    n_images = DEMO_IMAGES if n_images is None else n_images
    _check_build_arguments(n_images, workers, dest, storage_options)
    if dest is not None:
        make_root(dest)
        with writer_lock(dest, "demo build"):
            with tempfile.TemporaryDirectory(prefix="ned-") as tmp:
                write_ned(tmp, n_images=n_images, seed=DEMO_SEED,
                          workers=workers or min(os.cpu_count() or 1, 4))
                convert_ned(tmp, dest, workers=workers, overwrite=rebuild,
                            storage_options=storage_options)
            _build_encoders(dest, n_images, storage_options)
        return dest
    root = demo_root(cache_dir)
    stamp = _stamp(n_images)
    marker = root / _MARKER
    if not rebuild and _built(marker, stamp, any_size):
        logger.info("demo collection already built at %s", root)
        if not (root / INDEX_FILE).is_file():  # built before nest-data kept an index
            write_index(root)
        return root
    root.mkdir(parents=True, exist_ok=True)
    # another process building the demo now: wait for it, then use what it built
    with writer_lock(root, "demo build", wait=DEMO_BUILD_WAIT_S):
        if not rebuild and _built(marker, stamp, any_size):
            return root
        marker.unlink(missing_ok=True)
        with tempfile.TemporaryDirectory(prefix="ned-", dir=root.parent) as tmp:
            write_ned(tmp, n_images=n_images, seed=DEMO_SEED,
                      workers=workers or min(os.cpu_count() or 1, 4))
            convert_ned(tmp, root, workers=workers, overwrite=rebuild)
        _build_encoders(str(root), n_images, None)
        marker.write_text(json.dumps(stamp))
    logger.info("demo collection built at %s", root)
    return root


def _stamp(n_images: int) -> dict[str, Any]:
    """What the marker of a complete demo says: how it was built."""
    return {"n_images": n_images, "seed": DEMO_SEED, "format_version": FORMAT_VERSION,
            "encoders": _has_torch(), "fwrf_rois": list(DEMO_FWRF_ROIS),
            "eeg_subjects": list(DEMO_EEG_SUBJECTS)}


def _built(marker: Path, stamp: dict[str, Any], any_size: bool = False) -> bool:
    """Whether the demo's marker says it was built as ``stamp`` asks (of any number of
    images if ``any_size``)."""
    try:
        built = json.loads(marker.read_text())
    except (FileNotFoundError, ValueError):
        return False
    if any_size and isinstance(built, dict):
        built = {**built, "n_images": stamp["n_images"]}
    return bool(built == stamp)


def _check_build_arguments(n_images: Any, workers: Any, dest: str | None,
                           storage_options: dict[str, Any] | None) -> None:
    """Refuse what :func:`build_demo` cannot build, before anything is written."""
    if isinstance(n_images, bool) or not isinstance(n_images, (int, np.integer)) or not (
            1 <= n_images <= DEMO_MAX_IMAGES):
        raise InputError(f"n_images={n_images!r}: the demo builds 1 to {DEMO_MAX_IMAGES} "
                         f"images per image set; give a whole number in that range (default "
                         f"{DEMO_IMAGES}), or write stores of any size with `nest-data "
                         "generate`")
    if workers is not None and (isinstance(workers, bool) or not isinstance(
            workers, (int, np.integer)) or workers < 1):
        raise InputError(f"workers={workers!r}: give a positive number of conversion "
                         "processes, or None for the default (CPUs, at most 4)")
    if dest is None:
        if storage_options:
            raise InputError("storage_options were given without dest=; they apply to a "
                             "remote dest only (the default demo is a local folder)")
        return
    if is_local(dest) and storage_options:
        raise InputError(f"storage_options were given for the local dest {dest!r}, where "
                         "they have no use; drop them or give a remote URL (s3://, gs://)")


def _has_torch() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def _build_encoders(dest: str, n_images: int, storage_options: dict[str, Any] | None) -> None:
    """Convert synthetic fwRF, EEG and fsaverage encoders (and a ViT-B/32) into ``dest``, and
    generate subject 1's fsaverage store with them."""
    if not _has_torch():
        logger.warning("the demo's encoders and fsaverage store need torch: pip install "
                       "'nest-data[encode]' (which pins torch==2.13.0), then `nest-data demo "
                       "--rebuild`")
        return
    from nest_data._generate import generate
    from nest_data.converters.weights import convert_weights
    from nest_data.synthetic import (
        VIT_B_32_FILE,
        test_images,
        write_eeg_weights,
        write_fsaverage_weights,
        write_fwrf_weights,
        write_image_folder,
        write_vit_b_32,
    )

    with tempfile.TemporaryDirectory(prefix="berg-") as tmp:
        for roi in DEMO_FWRF_ROIS:  # voxels and labels as write_ned's, same seed
            write_fwrf_weights(tmp, SURFACE_SUBJECT, roi, seed=DEMO_SEED)
        for subject in DEMO_EEG_SUBJECTS:  # channels and times as write_ned's
            write_eeg_weights(tmp, subject, layout="berg", seed=DEMO_SEED)
        write_fsaverage_weights(tmp, SURFACE_SUBJECT, seed=DEMO_SEED,
                                coordinates=_fsaverage5_coordinates())
        pth = write_vit_b_32(Path(tmp) / VIT_B_32_FILE, seed=DEMO_SEED)
        # the pickles are the ones just written here, so trusting them is safe
        convert_weights(tmp, dest, vit_b_32=pth, storage_options=storage_options,
                        trust_pickles=True)
        pth.unlink()
        folder = Path(tmp) / "images"
        write_image_folder(folder, test_images(n_images, 256, seed=DEMO_SEED))
        generate(folder, dest, imageset="things", subject=SURFACE_SUBJECT,
                 train_dataset="nsd_fsaverage", location=dest, storage_options=storage_options)


def demo_encoders() -> str:
    """The encoders the demo holds (random weights in the publishers' formats), in words.

    Examples
    --------
    >>> print(demo_encoders())
    fMRI fwRF (train_dataset='nsd') of subject 1 for roi= V1, V2, FFA-1, PPA, lateral; EEG ...
    """
    return (f"fMRI fwRF (train_dataset='nsd') of subject {SURFACE_SUBJECT} for roi= "
            + ", ".join(DEMO_FWRF_ROIS) + "; EEG ViT-B/32 (modality='eeg') of subject"
            + ("s " if len(DEMO_EEG_SUBJECTS) > 1 else " ")
            + " and ".join(map(str, DEMO_EEG_SUBJECTS)) + "; fMRI fsaverage ViT-B/32 "
            f"(train_dataset='nsd_fsaverage') of subject {SURFACE_SUBJECT}, any of its 31 "
            "surface ROIs or the whole surface")


def demo_weights_paths(cat: Catalog) -> set[str]:
    """The weights folders the demo holds, relative to its root, as ``cat`` names them."""
    keys: list[dict[str, Any]] = [{"subject": SURFACE_SUBJECT, "roi": roi,
                                   "train_dataset": "nsd"} for roi in DEMO_FWRF_ROIS]
    keys += [{"subject": s, "modality": "eeg"} for s in DEMO_EEG_SUBJECTS]
    keys.append({"subject": SURFACE_SUBJECT, "train_dataset": "nsd_fsaverage"})
    return {cat.resolve_weights(**k)[1] for k in keys}


def check_demo_weights(cat: Catalog, model: str, rel: str) -> None:
    """Refuse weights the demo does not hold (``rel``: their folder under the root), naming
    the ones it does.

    Raises
    ------
    StoreNotFoundError
        ``rel`` is not one of :func:`demo_weights_paths`.

    Examples
    --------
    >>> import nest_data
    >>> cat = nest_data.catalog()
    >>> spec, rel = cat.resolve_weights(subject=2, roi="V1")
    >>> check_demo_weights(cat, spec.name, rel)
    Traceback (most recent call last):
    ...
    nest_data.errors.StoreNotFoundError: the demo holds no fmri/nsd/fwrf encoder for sub-02 ...
    """
    if rel in demo_weights_paths(cat):
        return
    which = rel.rsplit("/", 1)[-1].replace("_roi-", " roi=")
    raise StoreNotFoundError(
        f"the demo holds no {model} encoder for {which} (location='demo'); its encoders "
        f"(random weights) are: {demo_encoders()}. Ask for one of these, or convert NEST's "
        "weights with `nest-data convert weights SRC DEST` (--trust-pickles for fwRF) and "
        "pass location=DEST")


def demo_missing_advice(entry: Entry, root: str | Path) -> str:
    """How to get an entry that the demo at ``root`` lacks (for the message of ``open``).

    Before the demo is built: build it.  Once built: which stores of the entry's model the
    demo holds (it generates the fsaverage model's store of subject 1 only), and how to
    write the one asked for with an encoder the demo has.

    Examples
    --------
    >>> import nest_data
    >>> entry = nest_data.catalog().resolve(imageset="things", subject=2,
    ...                                     train_dataset="nsd_fsaverage")
    >>> print(demo_missing_advice(entry, demo_root()))
    the demo holds fmri/nsd_fsaverage/vit_b_32 stores of subject 1 only (on things); ...
    """
    base = Path(root)
    if not (base / _MARKER).is_file():
        return "run `nest-data demo` (or nest_data.build_demo()) to build the demo collection"
    from nest_data._index import read_index

    index = read_index(base)
    model = (entry.modality, entry.train_dataset, entry.model)
    held = sorted({(str(r.keys.get("imageset")), int(r.keys.get("subject", 0)))
                   for r in (index.stores.values() if index else ())
                   if (r.keys.get("modality"), r.keys.get("train_dataset"),
                       r.keys.get("model")) == model})
    name = "/".join(model)
    if (entry.imageset, entry.subject) in held:
        return ("the demo is incomplete: rebuild it with `nest-data demo --rebuild` (or "
                "nest_data.build_demo(rebuild=True))")
    imagesets, subjects = sorted({i for i, _ in held}), sorted({s for _, s in held})
    if not held:
        what = f"no {name} store"
    elif len(held) == len(imagesets) * len(subjects):
        what = (f"{name} stores of subject"
                + (f"s {subjects[0]}-{subjects[-1]}" if len(subjects) > 1
                   else f" {subjects[0]} only") + f" (on {', '.join(imagesets)})")
    else:
        what = f"{name} stores of " + ", ".join(f"{i} sub-{s:02d}" for i, s in held) + " only"
    generate = ("`nest-data generate IMAGES DEST --imageset NAME "
                + (f"--subject {SURFACE_SUBJECT} --train-dataset nsd_fsaverage "
                   if entry.train_dataset == "nsd_fsaverage"
                   else f"--subject {SURFACE_SUBJECT} --roi ROI " if entry.roi
                   else f"--modality eeg --subject {DEMO_EEG_SUBJECTS[0]} ")
                + "--location demo`")
    return (f"the demo holds {what}; open one of those, or write a store of your images with "
            f"an encoder the demo holds ({demo_encoders()}): {generate}")


def _fsaverage5_coordinates() -> dict[str, np.ndarray] | None:
    """Sphere positions of fsaverage's first 10,242 vertices per hemisphere, from nilearn."""
    try:
        from nilearn import datasets
    except ImportError:
        return None
    sphere = datasets.load_fsaverage("fsaverage5")["sphere"]
    return {"lh": np.asarray(sphere.parts["left"].coordinates),
            "rh": np.asarray(sphere.parts["right"].coordinates)}


@dataclass
class DemoResult:
    """What :func:`run_demo` produced: the summary text, the top images and the figures."""

    summary: str
    top: xr.DataArray
    figure: Path | None
    surface_figure: Path | None = None


@_config.progress_option
def run_demo(
    out_dir: str | Path = ".",
    *,
    imageset: str = "things",
    subject: int = 1,
    roi: str = "V1",
    k: int = 5,
    n_images: int | None = None,
    show_progress: bool | None = None,
    cache_dir: str | Path | None = None,
) -> DemoResult:
    """The main job on the demo data: open one ROI, summarise it, rank images, plot.

    Builds the demo first if needed.

    Parameters
    ----------
    out_dir : path
        Folder for the figures.
    imageset, subject, roi : str, int, str
        The entry the job opens (an fMRI entry of the demo).
    k : int
        Number of top images to list.
    n_images : int, optional
        Images per image set of the demo (see :func:`build_demo`): default the built
        demo's.
    show_progress : bool, optional
        Progress bars.
    cache_dir : path, optional
        Cache directory holding the demo (default: ``NEST_DATA_CACHE_DIR``, then the
        platform cache).

    Returns
    -------
    DemoResult
        ``summary`` (text), ``top`` (the top-``k`` images), ``figure`` (PNG path, or None
        when matplotlib is missing) and ``surface_figure`` (the fsaverage store's mean
        response on the cortical surface, or None without torch or nilearn).

    Examples
    --------
    >>> import nest_data, tempfile
    >>> result = nest_data.run_demo(tempfile.mkdtemp(), show_progress=False)
    >>> "SYNTHETIC" in result.summary
    True
    """
    root = Path(build_demo(cache_dir=cache_dir, n_images=n_images))
    da = open_entry(imageset=imageset, subject=subject, roi=roi, location=str(root))
    reliable = 0.5
    n_reliable = int((da["ncsnr"] > reliable).sum())
    values = da.values  # the demo entry is small: one chunk
    top = top_images(da, k=k, min_ncsnr=reliable if n_reliable else None)
    label = "concept" if "concept" in top.coords else "image"
    lines = [
        SYNTHETIC_NOTE,
        f"Demo collection: {root}",
        f"Opened {da.attrs['modality']}/{da.attrs['train_dataset']}/{da.attrs['model']} "
        f"{imageset} sub-{subject:02d} {roi}: {da.sizes['image']} images x "
        f"{da.sizes['voxel']} voxels, {da.dtype}, {da.data.npartitions} lazy chunk(s)",
        f"  voxels: ncsnr median {float(np.median(da['ncsnr'].values)):.2f}, {n_reliable} with "
        f"ncsnr > {reliable}; volume {tuple(da.attrs['volume_shape'])}",
        f"  responses: mean {values.mean():.3f}, sd {values.std():.3f}, "
        f"min {values.min():.3f}, max {values.max():.3f}",
        f"Top {len(top)} images for {roi} (mean over voxels with ncsnr > {reliable}):",
    ]
    for rank, (image, score) in enumerate(zip(top["image"].values, top.values, strict=True),
                                          1):
        name = str(top[label].values[rank - 1])
        lines.append(f"  {rank}. image {int(image):>5}  {name:<12} score {float(score):+.3f}")
    png = Path(out_dir) / f"nest-data-demo_{imageset}_sub-{subject:02d}_{roi}.png"
    figure: Path | None = png
    try:
        plot_roi_summary(da, png)
        lines.append(f"Figure: {png}")
    except ImportError as exc:
        logger.warning("%s", exc)
        lines.append(f"Figure skipped: {exc}")
        figure = None
    surface_png = _surface_summary(root, Path(out_dir), lines)
    _encode_summary(root, roi if roi in DEMO_FWRF_ROIS else DEMO_FWRF_ROIS[0], lines)
    return DemoResult("\n".join(lines), top, figure, surface_png)


def _encode_summary(root: Path, roi: str, lines: list[str]) -> None:
    """Encode a few new images with the demo's fwRF encoder of ``roi`` and report it."""
    if not _has_torch():
        lines.append("Encoding new images skipped: pip install 'nest-data[encode]'")
        return
    from nest_data._encode import encode
    from nest_data.synthetic import test_images

    images = test_images(4, 227, seed=DEMO_SEED + 1)
    new = encode(images, subject=SURFACE_SUBJECT, roi=roi, location=str(root))
    lines.append(f"Encoded 4 new images with sub-{SURFACE_SUBJECT:02d}'s {roi} fwRF encoder: "
                 f"{new.sizes['image']} x {new.sizes['voxel']} voxels, mean response "
                 f"{float(new.mean()):+.3f} (nest_data.encode(images, subject="
                 f"{SURFACE_SUBJECT}, roi={roi!r}, location='demo'))")
    lines += textwrap.wrap(f"Encoders on the demo: {demo_encoders()}", 88,
                           subsequent_indent="  ")


def _surface_summary(root: Path, out_dir: Path, lines: list[str]) -> Path | None:
    """Open the demo's fsaverage store (whole surface and FFA-1), summarise it, plot it."""
    keys: dict[str, Any] = {"imageset": "things", "subject": SURFACE_SUBJECT,
                            "train_dataset": "nsd_fsaverage",
            "location": str(root)}
    try:
        surface = open_entry(**keys)
    except NestDataError:
        lines.append("fsaverage store: not built (needs torch: pip install 'nest-data[encode]'"
                     ", then `nest-data demo --rebuild`)")
        return None
    ffa = open_entry(roi="FFA-1", **keys)
    lines += [
        f"Opened fmri/nsd_fsaverage/vit_b_32 things sub-{SURFACE_SUBJECT:02d} (generated by "
        f"the fsaverage encoder): {surface.sizes['image']} images x {surface.sizes['vertex']:,}"
        f" vertices in chunks of {surface.data.chunksize[0]} x {surface.data.chunksize[1]}",
        f"  FFA-1: {ffa.sizes['vertex']:,} vertices of both hemispheres, mean response "
        f"{float(ffa.mean()):+.3f} z",
    ]
    png = out_dir / f"nest-data-demo_things_sub-{SURFACE_SUBJECT:02d}_fsaverage.png"
    try:
        plot_surface_map(surface.mean("image"), png, title=(
            f"Demo: things sub-{SURFACE_SUBJECT:02d}, fsaverage model, mean response over "
            f"{surface.sizes['image']} images\nSYNTHETIC values: random encoder weights on "
            "synthetic images (fsaverage5 vertices shown)"))
    except ImportError as exc:
        logger.warning("%s", exc)
        lines.append(f"Surface figure skipped: {exc}")
        return None
    lines.append(f"Surface figure: {png}")
    return png


def plot_surface_map(values: xr.DataArray, path: str | Path, *, title: str | None = None
                     ) -> Path:
    """Write a PNG of per-vertex values on fsaverage's inflated surface (both hemispheres).

    Draws the vertices that fsaverage5 shares with fsaverage (the first 10,242 of each
    hemisphere: the icosahedral mesh numbers coarser vertices first) on nilearn's fsaverage5
    mesh, lateral and ventral views, with a colorbar in the entry's ``units`` (clipped at the
    99th percentile of the absolute values).  Vertices missing from ``values`` are left
    blank.

    Parameters
    ----------
    values : xarray.DataArray
        One value per vertex, with the ``hemisphere`` and ``fsaverage_index`` coordinates of
        an fsaverage entry, e.g. ``da.mean("image")``.
    path : path
        The PNG to write.
    title : str, optional
        Figure title (default: the entry's keys).

    Returns
    -------
    pathlib.Path

    Examples
    --------
    >>> import nest_data, tempfile, pathlib
    >>> da = nest_data.open(imageset="things", subject=1, train_dataset="nsd_fsaverage",
    ...                     location="demo")
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "surface.png"
    >>> nest_data.plot_surface_map(da.mean("image"), out).suffix
    '.png'
    """
    try:
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize
        from matplotlib.figure import Figure
        from nilearn import datasets, plotting
    except ImportError as exc:
        raise ImportError("the surface figure needs matplotlib and nilearn: pip install "
                          "'nest-data[plot]'") from exc
    for name in ("hemisphere", "fsaverage_index"):
        if name not in values.coords or values.dims != ("vertex",):
            raise NestDataError(f"plot_surface_map needs one value per vertex with the "
                                f"{name!r} coordinate (dims ('vertex',)); got dims "
                                f"{values.dims}. Pass an fsaverage entry reduced over images, "
                                "e.g. da.mean('image')")
    mesh = datasets.load_fsaverage("fsaverage5")["inflated"]
    data = np.asarray(values.values, dtype=np.float64)
    hemi, index = np.asarray(values["hemisphere"].values), np.asarray(
        values["fsaverage_index"].values)
    # the 99th percentile of |value|: a few extreme vertices would wash the colours out
    limit = float(np.nanpercentile(np.abs(data), 99)) or 1.0
    # a Figure of its own, not pyplot: the caller's matplotlib backend stays as it is
    fig = Figure(figsize=(9, 5))
    grid = fig.add_gridspec(2, 3, width_ratios=[1, 1, 0.04], height_ratios=[1, 0.8],
                            left=0.0, right=0.88,
                            bottom=0.03, top=0.88, wspace=0.0, hspace=0.0)
    for column, (short, side) in enumerate((("lh", "left"), ("rh", "right"))):
        n = mesh.parts[side].coordinates.shape[0]
        texture = np.full(n, np.nan)
        keep = (hemi == short) & (index < n)
        texture[index[keep]] = data[keep]
        for row, view in enumerate(("lateral", "ventral")):
            ax = fig.add_subplot(grid[row, column], projection="3d")
            plotting.plot_surf_stat_map(mesh.parts[side], texture, hemi=side, view=view,
                                        axes=ax, figure=fig, colorbar=False,
                                        cmap="RdBu_r", vmin=-limit, vmax=limit,
                                        engine="matplotlib")
            ax.set_box_aspect(None, zoom=1.45)  # nilearn's default leaves wide margins
            ax.set_title(f"{short} {view}", y=0.9, fontsize=10)
    bar_ax = fig.add_subplot(grid[:, 2])
    bar_ax.set_box_aspect(14)
    bar = fig.colorbar(ScalarMappable(Normalize(-limit, limit), cmap="RdBu_r"), cax=bar_ax,
                       extend="both")
    a = values.attrs
    bar.set_label(textwrap.fill(str(a.get("units") or "value"), 40), fontsize=9)
    fig.suptitle(title or f"{a.get('imageset', '')} sub-{int(a.get('subject', 0)):02d} "
                 f"{a.get('roi') or 'whole surface'} (fsaverage5 vertices)", fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    return path



def plot_roi_summary(da: xr.DataArray, path: str | Path) -> Path:
    """Write a PNG: the response distribution and the ROI's mean response in its volume.

    The right panel paints each voxel's mean response (over images) into the axial slice of
    the subject's volume that holds the most ROI voxels, in mm (through the entry's
    ``affine``), over the ROI's mean across all its slices (grey), with the outline of the
    ROI in that slice.

    Examples
    --------
    >>> import nest_data, tempfile, pathlib
    >>> da = nest_data.open(imageset="things", subject=1, roi="V1", location="demo")
    >>> nest_data.plot_roi_summary(da, pathlib.Path(tempfile.mkdtemp()) / "v1.png").suffix
    '.png'
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError("the figure needs matplotlib: pip install 'nest-data[plot]'") from exc
    for name in ("i", "j", "k"):
        if name not in da.coords:
            raise NestDataError(f"plot_roi_summary needs the voxel coordinate {name!r}; open an "
                                "fMRI entry converted by nest-data")
    path = Path(path)
    values = np.asarray(da.values)
    voxel_mean = values.mean(axis=0)
    i, j, kk = (np.asarray(da[c].values) for c in ("i", "j", "k"))
    shape = tuple(da.attrs["volume_shape"])
    volume = np.full(shape, np.nan, dtype=np.float32)
    volume[i, j, kk] = voxel_mean
    axial = int(np.bincount(kk).argmax())
    # voxel index -> mm along each axis (NSD's affines are axis-aligned: scale and shift)
    affine = np.asarray(da.attrs.get("affine", np.eye(4)), dtype=np.float64)
    scale, shift = np.diag(affine)[:3], affine[:3, 3]

    def mm(axis: int, index: Any) -> Any:
        return scale[axis] * np.asarray(index, dtype=np.float64) + shift[axis]

    extent = (float(mm(0, -0.5)), float(mm(0, shape[0] - 0.5)),
              float(mm(1, -0.5)), float(mm(1, shape[1] - 0.5)))
    limit = float(np.nanmax(np.abs(voxel_mean))) or 1.0
    fig = Figure(figsize=(10.5, 4.4))  # not pyplot: the caller's backend stays as it is
    ax0, ax1 = fig.subplots(1, 2)
    units = "response (z-scored betas, a.u.)"
    ax0.hist(values.ravel(), bins=60, color="#4477aa")
    ax0.set_xlabel(units)
    ax0.set_ylabel("count (images x voxels)")
    ax0.set_title(f"Response distribution: {values.shape[0]} images x {values.shape[1]} voxels",
                  fontsize=10)
    # background: the ROI's mean response averaged over all its axial slices (grey)
    with warnings.catch_warnings():  # columns without ROI voxels stay NaN (blank)
        warnings.simplefilter("ignore", RuntimeWarning)
        projection = np.nanmean(volume, axis=2)
    ax1.imshow(projection.T, origin="lower", cmap="Greys", extent=extent,
               vmin=-2 * limit, vmax=2 * limit, interpolation="nearest")
    image = ax1.imshow(volume[:, :, axial].T, origin="lower", cmap="RdBu_r", extent=extent,
                       vmin=-limit, vmax=limit, interpolation="nearest")
    in_slice = np.isfinite(volume[:, :, axial]).astype(float)
    centres_x, centres_y = mm(0, np.arange(shape[0])), mm(1, np.arange(shape[1]))
    ax1.contour(centres_x, centres_y, in_slice.T, levels=[0.5], colors="k", linewidths=0.8)
    margin = 12.0  # mm around the ROI
    xs, ys = mm(0, i), mm(1, j)
    ax1.set_xlim(xs.min() - margin, xs.max() + margin)
    ax1.set_ylim(ys.min() - margin, ys.max() + margin)
    ax1.set_aspect("equal")
    ax1.set_title(f"Mean response per voxel, axial slice z = {float(mm(2, axial)):+.1f} mm\n"
                  f"outline: the ROI in this slice; grey: its mean over {len(np.unique(kk))} "
                  "slices", fontsize=9)
    ax1.set_xlabel("x (mm)")
    ax1.set_ylabel("y (mm)")
    fig.colorbar(image, ax=ax1, label=f"mean over {values.shape[0]} images\n{units}")
    a = da.attrs
    fig.suptitle(f"{a.get('imageset')} sub-{int(a.get('subject', 0)):02d} {a.get('roi')}  "
                 "(nest-data; demo values are synthetic)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
