"""Multivariate relational neural control (RNC): image batches that align or disentangle the
representations of two ROIs, found by RNC's genetic search with RSM entries computed from
the responses instead of read from precomputed RSM files."""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from nest_data import _config
from nest_data._progress import active_client, compute
from nest_data.analysis.means import (
    Entries,
    _as_dask,
    _cells,
    _entry_list,
    _reliable,
    _shared_image_coords,
)
from nest_data.analysis.rnc import _batch_blocks, _positive_int, random_batches
from nest_data.analysis.similarity import _unit_rows
from nest_data.errors import InputError

logger = logging.getLogger("nest_data")

__all__ = ["MULTIVARIATE_RNC_CONTROLS", "multivariate_rnc", "mutation_sizes"]

#: Control conditions of multivariate RNC: keep the batches whose two RSMs correlate most
#: (``align``) or whose correlation is closest to zero (``disentangle``).
MULTIVARIATE_RNC_CONTROLS = ("align", "disentangle")

_RSM_ENTRIES = ("auto", "on_demand", "in_memory")
_GATHER_BYTES = 32 * 2**20  # responses gathered per step on the CPU (reused buffers)
_GATHER_BYTES_GPU = 2**30
_ENTRY_BATCHES = 1024  # batches looked up per step in precomputed RSMs
_SEED_NULL, _SEED_SEARCH, _SEED_STATS = 0, 1, 2  # independent random streams of one seed


def mutation_sizes(batch_size: int) -> tuple[int, ...]:
    """How many images each of RNC's five mutations of a batch replaces.

    One image, then 10%, 25%, 50% and 75% of the batch, rounded as RNC rounds them (Python's
    ``round``: halves go to the even neighbour).

    Examples
    --------
    >>> mutation_sizes(50)
    (1, 5, 12, 25, 38)
    >>> mutation_sizes(8)
    (1, 1, 2, 4, 6)
    """
    return (1, *(round(batch_size / 100 * share) for share in (10, 25, 50, 75)))


@_config.progress_option
def multivariate_rnc(
    data: Entries,
    rois: Sequence[str] | Sequence[Sequence[str]] | None = None,
    control: str | Sequence[str] = MULTIVARIATE_RNC_CONTROLS,
    *,
    generations: int = 2000,
    n_batches: int = 200,
    batch_size: int = 50,
    min_ncsnr: float | None = 0.5,
    cv: bool = False,
    null_samples: int = 1_000_000,
    stats_iterations: int = 100_000,
    seed: int | Sequence[int] = 20200220,
    refine: int = 0,
    device: str | None = None,
    rsm_entries: str = "auto",
    show_progress: bool | None = None,
) -> xr.Dataset:
    """Multivariate relational neural control (RNC) of two ROIs across subjects.

    Finds batches of images on which the representational similarity matrices (RSMs) of two
    ROIs agree (*align*) or are unrelated (*disentangle*), following Gifford et al. (2025),
    https://github.com/gifale95/RNC (``04_multivariate_rnc``):

    1. **RSMs.**  An ROI's RSM entry for two images is the Pearson correlation of their
       responses over a subject's voxels with ``ncsnr > min_ncsnr``, averaged over subjects.
       Each subject's responses are centred and scaled to unit length per image once (one
       dask pass over the stored responses), so an entry is a dot product and a batch's
       RSM a small matrix product; RSMs of the whole image set are never written anywhere
       (RNC's scripts write 277 GB of them per ROI for ``nsd``).  See ``rsm_entries``.
    2. **Score.**  A batch's score is the Pearson correlation between the lower triangles
       of the two ROIs' RSMs of its images (RNC's ``evaluate``).
    3. **Search.**  ``n_batches`` random batches of ``batch_size`` distinct images; every
       generation adds, for every batch, five mutants replacing 1 image and 10%, 25%, 50%
       and 75% of them (:func:`mutation_sizes`) with images not in the batch, then as many
       new random batches as there are batches so far; keeps the ``n_batches`` best
       (highest score to align, lowest absolute score to disentangle).  The best batch of
       every generation is returned with its score.
    4. **Null.**  ``null_samples`` random batches scored the same way; the *baseline* is
       the batch whose score is closest to the null distribution's mean (RNC's
       ``04_baseline.py``).
    5. **Refinement** (``refine > 0``; not in RNC).  The final generation's best batch is
       improved by up to ``refine`` single-image swaps, each the best of every swap of one
       of its images for one outside it: the scores of all of them at once (from the RSM
       entries between every image and the batch's, updating the sums of the Pearson
       correlation), the chosen swap scored again exactly and kept only if it improves.
       It stops early when no swap improves.  A step costs less than a generation on
       demand and a look-up in memory.  The search plateaus where single swaps still
       help: on 3,000 images, after 100 generations, 1-2 swaps bring a disentangling
       score about 70 times closer to zero and 40-50 raise an aligning one from 0.998 to
       0.9998.  The generations themselves stay RNC's.
    6. **Cross-validation** (``cv=True``).  For every subject in turn, the search runs on
       the RSMs averaged over the other subjects and the best batches are scored on the
       held-out subject's RSMs (``score_test``); the null batches are scored on both and the
       baseline chosen on the training subjects.  Then RNC's statistics
       (``06_stats.py``): within-subject p-values of the final test score minus the
       baseline's against differences of null scores (``stats_iterations`` of them;
       Benjamini-Hochberg across the control conditions given), the between-subject
       binomial p-value, and bootstrapped 95% intervals of the subject mean.

    Scores are exact: for the same batches they equal RNC's ``evaluate`` on RSMs built
    RNC's way (up to RNC's own float32 storage of the RSMs).  The random draws are
    NumPy's, seeded, so a run is reproducible but does not replay RNC's own draws.

    Parameters
    ----------
    data : xarray.DataTree, dict or list of DataArray
        fMRI entries of every subject for the ROIs (e.g. ``nest_data.open_many(...,
        subject=[1, ..., 8], roi=["V1", "V2"])``), all of the same images.
    rois : pair of str, or list of pairs, optional
        ROI 1 and ROI 2 (default: the two ROIs of ``data``).  A list of pairs runs each
        (dim ``pair``, labelled ``"V1-V2"`` as RNC's ``roi_pair``), sharing the
        responses of an ROI that appears in several.
    control : {"align", "disentangle"} or a sequence of them
        The control condition(s); a sequence adds a ``control`` dim (default: both).
    generations : int
        Generations of the genetic search (RNC: 2,000).
    n_batches, batch_size : int
        Batches kept per generation and images per batch (RNC: 200 and 50).  The image set
        must hold a batch plus the 75% of it that a mutation replaces.
    min_ncsnr : float or None
        Voxel selection (RNC: 0.5); None uses every voxel.
    cv : bool
        Leave-one-subject-out cross-validation (RNC's ``cv=1``); needs two subjects or more.
    null_samples : int
        Random batches of the null distribution and baseline (RNC: 1,000,000); 0 skips the
        null, the baseline and the statistics.
    stats_iterations : int
        Bootstrap resamples and null differences of the cross-validated statistics (RNC's
        ``n_iter``: 100,000); they use the first ``3 * stats_iterations`` null scores, as
        RNC does, so ``null_samples`` must be at least that when ``cv``.
    seed : int or sequence of int
        Seed of every random draw (RNC's: 20200220); a sequence runs independent
        repetitions side by side (dim ``seed``).  The same seed gives the same result.
    refine : int
        Single-image swaps that may improve the final best batch after the search (step
        5; default 0: RNC's search only).  Deterministic: no random draws.
    device : str, optional
        None: NumPy on the CPU.  A torch device (``"cuda"``, ``"cuda:1"``, ``"cpu"``):
        the entries and scores are computed with torch there (float64; needs the
        ``encode`` extra).  The random draws stay NumPy's.
    rsm_entries : {"auto", "on_demand", "in_memory"}
        ``"on_demand"`` computes the entries of every batch from the responses (memory: the
        normalised responses).  ``"in_memory"`` first builds each ROI's subject-summed RSM
        of the whole image set in memory (RAM, or the GPU's with ``device``; per subject
        too when ``cv``), then looks entries up.  ``"auto"`` chooses ``in_memory`` when it
        takes fewer operations than computing every batch on demand and the RSMs fit in
        half the available RAM (80% of the GPU's free memory with ``device="cuda"``).
        Both give the same scores.
    show_progress : bool, optional
        Progress bars: over the stored chunks of the responses, the generations, and the
        null batches.

    Returns
    -------
    xarray.Dataset
        Dims ``generation`` (1..``generations``) and ``batch_image``, led by ``pair``,
        ``control`` and ``seed`` when those were given as sequences (else they are scalar
        coordinates) and by ``test_subject`` (the held-out subject) when ``cv``.
        Variables: ``score`` (of the best batch of each generation, on the training
        subjects when ``cv``), ``image_index`` (its images' positions in the image set,
        ascending) and, named as the image coordinates shared by every entry (``image``,
        ``nsd_id``...), their labels.  With a null: ``baseline_score``,
        ``baseline_image_index`` and the baseline's labels (``baseline_image``...) and
        ``null_distribution`` (dim ``null_sample``).  With ``refine``: ``refined_score``,
        ``refined_image_index``, the labels (``refined_image``...), ``refined_swaps``
        (swaps taken) and, with ``cv``, ``refined_score_test``.  With ``cv``: ``score_test``,
        ``baseline_score_test``, ``null_distribution_test``, ``p_value``,
        ``significant``, ``p_value_between`` and the intervals ``score_test_ci`` and
        ``baseline_score_test_ci`` (dim ``bound``: 2.5 and 97.5 percent).  ``attrs`` record
        every parameter, the subjects and ``rsm_entries`` as chosen.

    Raises
    ------
    InputError
        An ROI not in ``data``, ``rois`` that are not pairs of two distinct ROIs, a subject
        missing an ROI, entries of different images, an unknown control or device, a
        batch too large for the image set, or a count out of range; the message says what
        is valid.
    ImportError
        ``device=`` without torch installed.

    Examples
    --------
    >>> import nest_data
    >>> tree = nest_data.open_many(imageset="nsd", subject=[1, 2, 3], roi=["V1", "FFA-1"],
    ...                            location="demo")
    >>> res = nest_data.multivariate_rnc(tree, rois=("V1", "FFA-1"), generations=5,
    ...                                  n_batches=4, batch_size=6, null_samples=100,
    ...                                  show_progress=False)
    >>> res.score.dims, res.image_index.dims
    (('control', 'generation'), ('control', 'generation', 'batch_image'))
    >>> best = res.sel(control="align").isel(generation=-1)
    >>> bool(best.score >= res.baseline_score)
    True
    >>> best.image.values.shape
    (6,)
    """
    what = "multivariate_rnc"
    _check_counts(generations=generations, n_batches=n_batches, batch_size=batch_size,
                  null_samples=null_samples, stats_iterations=stats_iterations,
                  refine=refine, rsm_entries=rsm_entries)
    controls, one_control = _names(control, MULTIVARIATE_RNC_CONTROLS, "control")
    seeds, one_seed = _seeds(seed)
    das = _entry_list(data, what)
    cells = _cells(das, what)
    present = list(dict.fromkeys(r for _, r in cells))
    pairs, one_pair = _pairs(rois, present)
    used = list(dict.fromkeys(r for p in pairs for r in p))
    subjects = sorted({s for s, _ in cells})
    missing = [f"sub-{s:02d} {r}" for s in subjects for r in used if (s, r) not in cells]
    if missing:
        raise InputError(f"multivariate_rnc averages every ROI over the same subjects; "
                         f"missing: {', '.join(missing)}. Open them too, or pass only the "
                         "subjects that have both ROIs.")
    entries = [cells[s, r] for r in used for s in subjects]
    labels = _shared_image_coords(entries, what)
    n_images = entries[0].sizes["image"]
    sizes = mutation_sizes(batch_size)
    if batch_size + max(sizes) > n_images:
        raise InputError(
            f"batch_size={batch_size} needs at least {batch_size + max(sizes)} images (a "
            f"batch plus the {max(sizes)} images its largest mutation draws from outside "
            f"it); the entries hold {n_images}. Use batch_size <= "
            f"{_largest_batch(n_images)}.")
    if cv and len(subjects) < 2:
        raise InputError(f"cv=True leaves one subject out at a time and needs at least 2 "
                         f"subjects; the entries hold {len(subjects)}")
    if cv and 0 < null_samples < 3 * stats_iterations:
        raise InputError(
            f"cv=True's statistics take 3 * stats_iterations = {3 * stats_iterations} null "
            f"scores (RNC: 100,000 of 1,000,000) and null_samples={null_samples}; pass "
            f"stats_iterations <= {null_samples // 3} or more null_samples")
    if cv and null_samples == 0:
        logger.info("multivariate_rnc: null_samples=0, so no baseline and no statistics")
    ops = _ops(device)

    run = _Run(n_images=n_images, batch_size=batch_size, n_batches=n_batches,
               generations=generations, sizes=sizes, cv=cv, n_subjects=len(subjects),
               refine=refine)
    mode = _choose_mode(rsm_entries, run, len(used), ops,
                        n_searches=len(pairs) * len(controls) * len(seeds)
                        * (len(subjects) if cv else 1),
                        null_samples=null_samples * len(pairs) * len(seeds))
    tables = _prepare(cells, subjects, used, min_ncsnr, ops, mode, cv)
    scorers: dict[tuple[str, str], Any] = {
        pair: _Scorer(tables[pair[0]], tables[pair[1]], ops, run) for pair in pairs}
    # On a distributed cluster (not with a torch device: that is this process's) each
    # pair's scorer, with the responses or RSMs, goes to the workers once for every task.
    client = None if ops.torch else active_client()
    if client is not None:
        scorers = {pair: client.scatter(sc, hash=False) for pair, sc in scorers.items()}

    folds: list[int | None] = list(range(len(subjects))) if cv else [None]
    searches = [(pair, c, s, k) for pair in pairs for c in controls for s in seeds
                for k in folds]
    found = _run_tasks(
        [_Task(_search, scorers[p], (run, c, _search_rng(s, c, k, subjects), k))
         for p, c, s, k in searches],
        generations, "multivariate RNC (generations)", client)
    results = dict(zip(searches, found, strict=True))
    nulls: dict[tuple[tuple[str, str], int], dict[str, np.ndarray]] = {}
    if null_samples:
        keys = [(pair, s) for pair in pairs for s in seeds]
        done = _run_tasks(
            [_Task(_null, scorers[p], (run, null_samples, _null_seed(s))) for p, s in keys],
            null_samples, "multivariate RNC (null batches)", client)
        nulls = dict(zip(keys, done, strict=True))

    attrs = {k: v for k, v in entries[0].attrs.items()
             if k in ("modality", "train_dataset", "model", "imageset", "units")}
    attrs.update({
        "analysis": "multivariate relational neural control (Gifford et al. 2025)",
        "generations": generations, "n_batches": n_batches, "batch_size": batch_size,
        "mutation_sizes": list(sizes), "cv": int(cv), "null_samples": null_samples,
        "refine": refine,
        "subjects": subjects, "rsm_entries": mode, "device": str(device or "numpy"),
    })
    if min_ncsnr is not None:
        attrs["min_ncsnr"] = min_ncsnr
    if cv and null_samples:
        attrs["stats_iterations"] = stats_iterations
    ds = _assemble(results, nulls, pairs, controls, seeds, subjects, labels, run,
                   stats_iterations, attrs)
    ds["n_voxels"] = xr.DataArray([tables[r].n_voxels for r in used], dims=("roi", "subject"),
                                  coords={"roi": used, "subject": subjects})
    squeeze = {d: 0 for d, one in (("pair", one_pair), ("control", one_control),
                                   ("seed", one_seed)) if one}
    return ds.isel(squeeze) if squeeze else ds


# --------------------------------------------------------------------------- validation


def _check_counts(*, generations: int, n_batches: int, batch_size: int, null_samples: int,
                  stats_iterations: int, refine: int, rsm_entries: str) -> None:
    for name, value in (("generations", generations), ("n_batches", n_batches),
                        ("batch_size", batch_size), ("stats_iterations", stats_iterations)):
        _positive_int(value, name)
    for name, value, what in (("null_samples", null_samples,
                               "0 skips the null; RNC uses 1,000,000"),
                              ("refine", refine, "0: RNC's search only; try 50")):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise InputError(f"{name} must be an integer >= 0 ({what}), got {value!r}")
    if batch_size < 3:
        raise InputError(f"batch_size must be at least 3 (an RSM of n images has n(n-1)/2 "
                         f"entries to correlate; RNC uses 50), got {batch_size}")
    if rsm_entries not in _RSM_ENTRIES:
        raise InputError(f"rsm_entries must be one of {', '.join(map(repr, _RSM_ENTRIES))}, "
                         f"got {rsm_entries!r}")


def _names(value: str | Sequence[str], valid: Sequence[str], what: str) -> tuple[list[str], bool]:
    one = isinstance(value, str)
    names = [value] if isinstance(value, str) else [str(v) for v in value]
    bad = [n for n in names if n not in valid]
    if bad or not names or len(set(names)) != len(names):
        raise InputError(f"{what} must be one of {', '.join(map(repr, valid))} or a sequence "
                         f"of distinct ones, got {value!r}")
    return names, one


def _seeds(seed: int | Sequence[int]) -> tuple[list[int], bool]:
    one = not isinstance(seed, Sequence)
    seeds: list[Any] = list(seed) if isinstance(seed, Sequence) else [seed]
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0:
            raise InputError(f"seed must be an integer >= 0 or a sequence of them, got "
                             f"{seed!r}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise InputError(f"seed= as a sequence must hold distinct seeds, got {seed!r}")
    return [int(s) for s in seeds], one


def _pairs(rois: Any, present: list[str]) -> tuple[list[tuple[str, str]], bool]:
    one = rois is None or (isinstance(rois, Sequence) and not isinstance(rois, str)
                           and all(isinstance(r, str) for r in rois))
    groups = [present if rois is None else rois] if one else list(rois)
    pairs: list[tuple[str, str]] = []
    for group in groups:
        names = [group] if isinstance(group, str) else list(group)
        if (len(names) != 2 or not all(isinstance(n, str) for n in names)
                or names[0] == names[1]):
            raise InputError(
                f"multivariate_rnc compares two distinct ROIs; got rois={rois!r} and the "
                f"data holds {', '.join(present)}. Pass rois=(roi_1, roi_2), or a list of "
                "such pairs.")
        unknown = [n for n in names if n not in present]
        if unknown:
            raise InputError(f"ROI {', '.join(map(repr, unknown))} is not in the entries, "
                             f"which hold {', '.join(present)}; open it with "
                             "nest_data.open_many(..., roi=[...]) or pick one of those")
        pairs.append((names[0], names[1]))
    if len(set(pairs)) != len(pairs):
        raise InputError(f"rois= lists a pair twice: {rois!r}")
    return pairs, one


def _largest_batch(n_images: int) -> int:
    return max((b for b in range(3, n_images + 1) if b + max(mutation_sizes(b)) <= n_images),
               default=0)


# --------------------------------------------------------------------------- array backends


class _Ops:
    """The array operations of the scorer, on NumPy arrays or on torch tensors."""

    torch = False

    def put(self, a: np.ndarray) -> Any:
        return a

    def host(self, a: Any) -> np.ndarray:
        return np.asarray(a)

    def gather_bytes(self) -> int:
        return _GATHER_BYTES

    def budget_bytes(self) -> int:
        """Memory ``rsm_entries="auto"`` may give the RSMs: half of what is available
        (Linux's ``MemAvailable``: free pages plus reclaimable cache; else free pages;
        else 4 GB)."""
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024 // 2
        except OSError:
            pass
        try:
            return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")) // 2
        except (ValueError, OSError, AttributeError):
            return 2 * 2**30

    def rows(self, z: Any, flat: Any) -> Any:
        """The rows ``flat`` of ``z``, copied into a buffer this thread reuses (fresh
        allocations of tens of MB cost more in page faults than the copy)."""
        size = flat.shape[0] * z.shape[1]
        local = _buffers.__dict__
        if local.get("size", 0) < size:
            local["buf"], local["size"] = np.empty(size), size
        out = local["buf"][:size].reshape(flat.shape[0], z.shape[1])
        np.take(z, flat, axis=0, out=out, mode="clip")
        return out

    def zeros(self, n: int) -> Any:
        return np.zeros((n, n))

    def add_lower_gram(self, out: Any, z: Any) -> None:
        """``out += tril(z @ z.T)`` in place, a block of rows at a time: each row ``i``
        gets its entries ``j <= i`` (the lookups read only ``j < i``), so the peak is
        ``out`` plus one block and the products half of ``z @ z.T``."""
        n = z.shape[0]
        step = max(1, self.gather_bytes() // (8 * n))
        for start in range(0, n, step):
            stop = min(n, start + step)
            out[start:stop, :stop] += z[start:stop] @ z[:stop].T

    def lookup(self, table: Any, flat: Any) -> Any:
        """``table.ravel()[flat]`` (a third of the time of 2-D fancy indexing)."""
        return table.ravel().take(flat)


_buffers = threading.local()


class _TorchOps(_Ops):
    torch = True

    def __init__(self, device: Any) -> None:
        import torch

        self.device = device
        self._torch = torch

    def put(self, a: np.ndarray) -> Any:
        return self._torch.as_tensor(a, device=self.device)

    def host(self, a: Any) -> np.ndarray:
        return np.asarray(a.cpu().numpy())

    def gather_bytes(self) -> int:
        return _GATHER_BYTES_GPU if self.device.type == "cuda" else _GATHER_BYTES

    def budget_bytes(self) -> int:
        """80% of the device's free memory (it holds nothing else of ours but a block)."""
        if self.device.type == "cuda":
            return int(self._torch.cuda.mem_get_info(self.device)[0] * 0.8)
        return super().budget_bytes()

    def rows(self, z: Any, flat: Any) -> Any:
        return z.index_select(0, flat)

    def zeros(self, n: int) -> Any:
        return self._torch.zeros((n, n), dtype=self._torch.float64, device=self.device)

    def lookup(self, table: Any, flat: Any) -> Any:
        return self._torch.take(table, flat)


def _ops(device: str | None) -> _Ops:
    if device is None:
        return _Ops()
    if not isinstance(device, str):
        raise InputError(f"device must be None (NumPy) or a torch device name such as "
                         f"'cuda' or 'cpu', got {device!r}")
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"device={device!r} computes with torch, which is not installed: "
                          "pip install 'nest-data[encode]', or pass device=None for NumPy"
                          ) from exc
    from nest_data._models import torch_device

    return _TorchOps(torch_device(device))


# --------------------------------------------------------------------------- RSM entries


@dataclass(frozen=True)
class _Run:
    """The sizes of one multivariate RNC call."""

    n_images: int
    batch_size: int
    n_batches: int
    generations: int
    sizes: tuple[int, ...]
    cv: bool
    n_subjects: int
    refine: int = 0


@dataclass
class _Tables:
    """What the scores of one ROI need: each subject's normalised responses (on demand),
    or the subject-summed RSM and, for cv, each subject's RSM (in memory)."""

    n_voxels: list[int]
    responses: list[Any]  # on demand: (n_images, n_voxels) per subject
    total: Any = None  # in memory: sum of the subjects' RSMs
    single: list[Any] | None = None  # in memory, cv: each subject's RSM


def _choose_mode(mode: str, run: _Run, n_rois: int, ops: _Ops, n_searches: int,
                 null_samples: int) -> str:
    """``rsm_entries`` as chosen: ``in_memory`` when building the RSMs (one product of
    every subject's responses with themselves) takes fewer multiply-adds than computing
    every batch's entries on demand, and they fit the memory budget (half the available
    RAM, or 80% of the GPU's free memory)."""
    if mode != "auto":
        return mode
    n, b = run.n_images, run.batch_size
    evaluations = n_searches * run.n_batches * (1 + 11 * run.generations) + null_samples
    tables = n_rois * (1 + (run.n_subjects if run.cv else 0)) * n * n * 8
    cheaper = n * n < evaluations * b * b
    fits = tables <= ops.budget_bytes()
    chosen = "in_memory" if cheaper and fits else "on_demand"
    logger.info("multivariate_rnc: rsm_entries=%r (RSMs in memory: %.2f GB, %s; building "
                "them: %s than %d batch evaluations)", chosen, tables / 1e9,
                "fits" if fits else "does not fit", "cheaper" if cheaper else "dearer",
                evaluations)
    return chosen


def _prepare(cells: dict[tuple[int, str], xr.DataArray], subjects: list[int],
             rois: list[str], min_ncsnr: float | None, ops: _Ops, mode: str,
             cv: bool) -> dict[str, _Tables]:
    """Every subject's reliable-voxel responses, centred and scaled to unit length per image
    (one dask pass; an entry at a time, so the peak is the result plus one entry), then on
    the device, or turned into RSMs there (``in_memory``)."""
    tables: dict[str, _Tables] = {}
    show = _config.show_progress()
    with tqdm(total=len(rois) * len(subjects), desc="multivariate RNC (responses)",
              unit="entry", disable=not show) as bar, _config.progress(False):
        for roi in rois:
            t = _Tables(n_voxels=[], responses=[])
            for s in subjects:
                kept = _reliable(cells[s, roi], min_ncsnr)
                t.n_voxels.append(int(kept.shape[1]))
                lazy = _as_dask(kept).rechunk({1: -1}).map_blocks(_unit_rows,
                                                                  dtype=np.float64)
                (z,) = compute(lazy, desc=f"sub-{s:02d} {roi}")
                z = ops.put(np.ascontiguousarray(z))
                if mode == "on_demand":
                    t.responses.append(z)
                    bar.update()
                    continue
                if t.total is None:
                    t.total = ops.zeros(len(z))
                if cv:  # each subject's RSM too (the test RSM of its fold)
                    single = ops.zeros(len(z))
                    ops.add_lower_gram(single, z)
                    t.single = [*(t.single or []), single]
                    t.total += single
                else:
                    ops.add_lower_gram(t.total, z)
                del z
                bar.update()
            tables[roi] = t
    return tables


class _Scorer:
    """Scores image batches of one ROI pair: the Pearson correlation between the lower
    triangles of the two ROIs' RSMs of each batch's images, the RSMs summed over a group of
    subjects (a sum, as RNC's mean, correlates the same)."""

    def __init__(self, first: _Tables, second: _Tables, ops: _Ops, run: _Run) -> None:
        self.tables = (first, second)
        self.ops = ops
        self.run = run
        self.rows, self.cols = np.tril_indices(run.batch_size, -1)
        self.pair_rows, self.pair_cols = ops.put(self.rows), ops.put(self.cols)
        on_demand = first.total is None
        widest = max(max(t.n_voxels) for t in self.tables)
        self.step = (max(1, ops.gather_bytes() // (8 * run.batch_size * widest)) if on_demand
                     else _ENTRY_BATCHES)

    def chunks(self, batches: np.ndarray) -> Iterator[tuple[int, Any]]:
        """``(start, key)`` per step: the batches themselves (on demand) or the flat
        positions of their lower-triangle entries in an image x image table (in memory)."""
        for start in range(0, len(batches), self.step):
            b = batches[start:start + self.step]
            if self.tables[0].total is not None:  # the tables hold the lower triangle
                first, second = b[:, self.rows], b[:, self.cols]
                b = np.maximum(first, second) * self.run.n_images + np.minimum(first, second)
            yield start, self.ops.put(np.ascontiguousarray(b))

    def subject_entries(self, key: Any, roi: int, subject: int) -> Any:
        """The lower-triangle RSM entries ``(batches, pairs)`` of one subject."""
        t = self.tables[roi]
        if t.total is not None:
            assert t.single is not None
            return self.ops.lookup(t.single[subject], key)
        z = t.responses[subject]
        x = self.ops.rows(z, key.reshape(-1)).reshape(*key.shape, z.shape[1])
        return (x @ x.mT)[:, self.pair_rows, self.pair_cols]

    def entries(self, key: Any, roi: int, group: tuple[int, ...]) -> Any:
        """The lower-triangle entries of the RSM summed over the subjects ``group``: all of
        them, all but one (cv training) or one (cv test)."""
        t = self.tables[roi]
        every = len(group) == self.run.n_subjects
        if t.total is not None and (every or len(group) == self.run.n_subjects - 1):
            out = self.ops.lookup(t.total, key)
            if not every:
                (left,) = set(range(self.run.n_subjects)) - set(group)
                out = out - self.subject_entries(key, roi, left)
            return out
        parts = [self.subject_entries(key, roi, s) for s in group]
        out = parts[0]
        for p in parts[1:]:
            out = out + p
        return out

    def cross(self, batch: np.ndarray, roi: int, group: tuple[int, ...]) -> np.ndarray:
        """The RSM entries, summed over the subjects ``group``, between every image and
        the images of ``batch``: ``(n_images, batch_size)``, on the host."""
        t = self.tables[roi]
        if t.total is not None:
            every = np.arange(self.run.n_images)[:, None]
            key = np.maximum(every, batch) * self.run.n_images + np.minimum(every, batch)
            return self.ops.host(self.entries(self.ops.put(key), roi, group))
        index = self.ops.put(np.ascontiguousarray(batch))
        out = None
        for s in group:
            z = t.responses[s]
            part = z @ self.ops.rows(z, index).mT
            out = part if out is None else out + part
        return self.ops.host(out)

    def scores(self, batches: np.ndarray, group: tuple[int, ...]) -> np.ndarray:
        out = np.empty(len(batches))
        for start, key in self.chunks(batches):
            r = _pearson(self.entries(key, 0, group), self.entries(key, 1, group))
            out[start:start + key.shape[0]] = self.ops.host(r)
        return out


def _pearson(a: Any, b: Any) -> Any:
    """Pearson correlation of the rows of ``a`` and ``b`` (NumPy arrays or torch tensors)."""
    a = a - a.mean(-1)[:, None]
    b = b - b.mean(-1)[:, None]
    return (a * b).sum(-1) / ((a * a).sum(-1) * (b * b).sum(-1)) ** 0.5


# --------------------------------------------------------------------------- the search


def _search_rng(seed: int, control: str, fold: int | None,
                subjects: list[int]) -> np.random.Generator:
    """The search's own stream: the same for a seed, control and held-out subject whatever
    else the call runs."""
    held_out = 0 if fold is None else subjects[fold]
    return np.random.default_rng([seed, _SEED_SEARCH,
                                  MULTIVARIATE_RNC_CONTROLS.index(control), held_out])


def _null_seed(seed: int) -> int:
    return int(np.random.default_rng([seed, _SEED_NULL]).integers(2**62))


def _draw(rng: np.random.Generator, n: int, size: int, count: int) -> np.ndarray:
    """``count`` random batches (rows sorted) of ``size`` distinct images."""
    return random_batches(n, size, count, int(rng.integers(2**62)))


def _mutate(rng: np.random.Generator, batches: np.ndarray, n_images: int,
            sizes: tuple[int, ...]) -> np.ndarray:
    """RNC's mutants: for every batch (in order) and every size ``k`` of ``sizes``, ``k``
    positions of the batch replaced by ``k`` distinct images not in it; rows sorted."""
    parents = np.repeat(batches, len(sizes), axis=0)
    k = np.tile(np.asarray(sizes), len(batches))
    n_rows, width = parents.shape
    kmax = int(k.max())
    active = np.arange(kmax) < k[:, None]
    where = np.argsort(rng.random((n_rows, width)), axis=1)[:, :kmax]
    new = _outside(rng, parents, n_images, active)
    out = parents.copy()
    out[np.nonzero(active)[0], where[active]] = new[active]
    out.sort(axis=1)
    return out


def _outside(rng: np.random.Generator, parents: np.ndarray, n_images: int,
             active: np.ndarray) -> np.ndarray:
    """For every row, distinct images not in the row of ``parents`` where ``active``."""
    n_rows, kmax = active.shape
    if 2 * (parents.shape[1] + kmax) > n_images:  # few images outside: random keys
        keys = rng.random((n_rows, n_images))
        keys[np.arange(n_rows)[:, None], parents] = 2.0
        return np.argsort(keys, axis=1)[:, :kmax]
    # Many outside: draw, then redraw only the draws that hit the batch or repeat an
    # earlier draw of the row (a few percent per round).
    flat_parents = (parents + (np.arange(n_rows) * n_images)[:, None]).ravel()
    offsets = (np.arange(n_rows) * n_images)[:, None]
    cand = rng.integers(0, n_images, (n_rows, kmax))
    cand[~active] = -1 - np.broadcast_to(np.arange(kmax), active.shape)[~active]
    while True:
        shifted = cand + offsets
        pos = np.minimum(np.searchsorted(flat_parents, shifted), flat_parents.size - 1)
        bad = flat_parents[pos] == shifted
        order = np.argsort(cand, axis=1, kind="stable")
        ranked = np.take_along_axis(cand, order, axis=1)
        repeat = np.zeros_like(bad)
        np.put_along_axis(repeat, order[:, 1:], ranked[:, 1:] == ranked[:, :-1], axis=1)
        bad = (bad | repeat) & active
        if not bad.any():
            return cand
        cand[bad] = rng.integers(0, n_images, int(bad.sum()))


def _ranked(scores: np.ndarray, control: str) -> np.ndarray:
    """Best first: highest score to align, lowest absolute score to disentangle (NaN
    last; ties in order)."""
    key = -scores if control == "align" else np.abs(scores)
    return np.argsort(key, kind="stable")


def _search(scorer: _Scorer, run: _Run, control: str, rng: np.random.Generator,
            fold: int | None, tick: Callable[[], None]) -> dict[str, np.ndarray]:
    """RNC's genetic search (``05_multivariate_rnc.py``) on the subjects other than ``fold``
    (all when None); the best batch and score of each generation, and the best batches'
    scores on the held-out subject."""
    every = tuple(range(run.n_subjects))
    group = every if fold is None else tuple(s for s in every if s != fold)
    n, size = run.n_images, run.batch_size
    batches = _draw(rng, n, size, run.n_batches)
    scores = scorer.scores(batches, group)
    best = np.empty((run.generations, size), dtype=np.int64)
    best_scores = np.empty(run.generations)
    for g in range(run.generations):
        mutants = _mutate(rng, batches, n, run.sizes)
        fresh = _draw(rng, n, size, len(batches) + len(mutants))
        new = np.concatenate([mutants, fresh])
        batches = np.concatenate([batches, new])
        scores = np.concatenate([scores, scorer.scores(new, group)])
        keep = _ranked(scores, control)[:run.n_batches]
        batches, scores = batches[keep], scores[keep]
        best[g], best_scores[g] = batches[0], scores[0]
        tick()
    out = {"batches": best, "scores": best_scores}
    if run.refine:
        batch, score, swaps = _refine(scorer, best[-1], float(best_scores[-1]), group,
                                      control, run.refine)
        out.update(refined=batch, refined_score=np.asarray(score),
                   refined_swaps=np.asarray(swaps))
    if fold is not None:
        out["test"] = scorer.scores(best, (fold,))
        if run.refine:
            out["refined_test"] = scorer.scores(out["refined"][None], (fold,)).reshape(())
    return out


def _refine(scorer: _Scorer, batch: np.ndarray, score: float, group: tuple[int, ...],
            control: str, steps: int) -> tuple[np.ndarray, float, int]:
    """Up to ``steps`` best single-image swaps of ``batch`` (its score ``score``), each kept
    only if its exact score improves on the last."""
    swaps = 0
    for _ in range(steps):
        candidates = _swap_scores(scorer.cross(batch, 0, group), scorer.cross(batch, 1, group),
                                  batch)
        key = -candidates if control == "align" else np.abs(candidates)
        key[np.isnan(key)] = np.inf
        image, position = np.unravel_index(np.argmin(key), key.shape)
        new = batch.copy()
        new[position] = image
        new.sort()
        exact = float(scorer.scores(new[None], group)[0])
        better = exact > score if control == "align" else abs(exact) < abs(score)
        if not better:
            break
        batch, score, swaps = new, exact, swaps + 1
    logger.debug("multivariate_rnc: %s refined by %d swaps to %.3g", control, swaps, score)
    return batch, score, swaps


def _swap_scores(first: np.ndarray, second: np.ndarray, batch: np.ndarray) -> np.ndarray:
    """The score of ``batch`` with its image at position ``p`` replaced by image ``j``, for
    every ``(j, p)``: ``(n_images, batch_size)``, NaN where ``j`` is in the batch.

    ``first`` and ``second`` are the two ROIs' RSM entries between every image and the
    batch's (:meth:`_Scorer.cross`).  A swap takes out the ``batch_size - 1`` entries of
    row ``p`` of the batch's RSMs and puts in those of image ``j`` with the other images,
    so the sums of the Pearson correlation (of ``x``, ``y``, ``x**2``, ``y**2`` and
    ``x*y`` over the lower triangle) update in one step for every swap."""
    m = len(batch)
    n_pairs = m * (m - 1) / 2
    off = ~np.eye(m, dtype=bool)
    inside = [np.where(off, c[batch], 0.0) for c in (first, second)]  # the batch's RSMs
    products = (inside[0] * inside[0], inside[1] * inside[1], inside[0] * inside[1])
    now = [a.sum() / 2 for a in (*inside, *products)]  # sums over the lower triangle
    out_rows = [a.sum(axis=1) for a in (*inside, *products)]  # what row p contributes
    cand = (first, second, first * first, second * second, first * second)
    # what image j brings in at position p: its entries with every batch image but p's
    in_rows = [c.sum(axis=1, keepdims=True) - c for c in cand]
    sx, sy, sxx, syy, sxy = (total - out + new for total, out, new
                             in zip(now, out_rows, in_rows, strict=True))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (n_pairs * sxy - sx * sy) / np.sqrt((n_pairs * sxx - sx * sx)
                                                 * (n_pairs * syy - sy * sy))
    r[batch] = np.nan
    return r


def _null(scorer: _Scorer, run: _Run, count: int, seed: int, tick: Callable[[int], None]
          ) -> dict[str, np.ndarray]:
    """RNC's null distribution and baseline (``04_baseline.py``): ``count`` random batches
    scored on every subject (or, with cv, on each subject's training and test groups: the
    same batches, as RNC's runs with one seed); the baseline is the batch whose score is
    closest to the mean of the (training) null scores."""
    n_sub = run.n_subjects
    folds = n_sub if run.cv else 1
    train = np.empty((folds, count))
    test = np.empty((folds, count)) if run.cv else None
    ops = scorer.ops
    start = 0
    for block in _batch_blocks(run.n_images, run.batch_size, count, seed):
        for offset, b in scorer.chunks(block):
            at = slice(start + offset, start + offset + b.shape[0])
            if not run.cv:
                train[0, at] = ops.host(_pearson(scorer.entries(b, 0, tuple(range(n_sub))),
                                                 scorer.entries(b, 1, tuple(range(n_sub)))))
                continue
            assert test is not None
            per = [[scorer.subject_entries(b, roi, s) for s in range(n_sub)]
                   for roi in (0, 1)]
            total = [sum(p[1:], p[0]) for p in per]
            for k in range(n_sub):
                train[k, at] = ops.host(_pearson(total[0] - per[0][k], total[1] - per[1][k]))
                test[k, at] = ops.host(_pearson(per[0][k], per[1][k]))
        start += len(block)
        tick(len(block))
    pick = np.abs(train - train.mean(axis=1, keepdims=True)).argmin(axis=1)
    out = {"null": train, "baseline": _batches_at(run, count, seed, pick),
           "baseline_score": train[np.arange(folds), pick]}
    if test is not None:
        out["null_test"] = test
        out["baseline_score_test"] = test[np.arange(folds), pick]
    return out


def _batches_at(run: _Run, count: int, seed: int, index: np.ndarray) -> np.ndarray:
    """The null batches at positions ``index`` (drawn again, block by block)."""
    out = np.empty((len(index), run.batch_size), dtype=np.int64)
    start = 0
    for block in _batch_blocks(run.n_images, run.batch_size, count, seed):
        here = (index >= start) & (index < start + len(block))
        out[here] = block[index[here] - start]
        start += len(block)
        if start > index.max():
            break
    return out


# --------------------------------------------------------------------------- running tasks


@dataclass
class _Task:
    """A search or a null: ``func(scorer, *args, tick)``, where ``tick`` advances the bar."""

    func: Callable[..., dict[str, np.ndarray]]
    scorer: Any  # a _Scorer, or its future on a distributed cluster
    args: tuple[Any, ...]


class _Ticker:
    """Advances a shared tqdm bar from the threads of this process; pickled (to another
    process) it is a no-op, and the bar catches up when the task is done."""

    def __init__(self, bar: Any, lock: threading.Lock, done: list[int], index: int) -> None:
        self.bar, self.lock, self.done, self.index = bar, lock, done, index

    def __call__(self, amount: int = 1) -> None:
        with self.lock:
            self.done[self.index] += amount
            self.bar.update(amount)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_NoTick, ())


class _NoTick:
    """A :class:`_Ticker` in another process: counts nothing."""

    def __call__(self, amount: int = 1) -> None:
        return None


def _call(func: Callable[..., dict[str, np.ndarray]], scorer: _Scorer, args: tuple[Any, ...],
          tick: Callable[..., None]) -> dict[str, np.ndarray]:
    return func(scorer, *args, tick)


def _run_tasks(tasks: list[_Task], units: int, desc: str, client: Any
               ) -> list[dict[str, np.ndarray]]:
    """Run the tasks side by side, on ``client`` (a ``distributed.Client``; the tasks'
    scorers are its futures) or, when None, in threads here; one bar over ``units`` per
    task."""
    show = _config.show_progress()
    done = [0] * len(tasks)
    lock = threading.Lock()
    with tqdm(total=units * len(tasks), desc=desc, disable=not show) as bar:
        ticks = [_Ticker(bar, lock, done, i) for i in range(len(tasks))]
        if client is not None:
            from distributed import as_completed

            futures = [client.submit(_call, task.func, task.scorer, task.args, tick,
                                     pure=False) for task, tick in zip(tasks, ticks, strict=True)]
            where = {f.key: i for i, f in enumerate(futures)}
            for future in as_completed(futures):
                i = where[future.key]
                future.result()  # raises the task's error here
                with lock:
                    bar.update(units - done[i])
                    done[i] = units
            return [f.result() for f in futures]
        if len(tasks) == 1:
            return [_call(tasks[0].func, tasks[0].scorer, tasks[0].args, ticks[0])]
        with ThreadPoolExecutor(max_workers=min(len(tasks), os.cpu_count() or 1)) as pool:
            return list(pool.map(_call, [t.func for t in tasks], [t.scorer for t in tasks],
                                 [t.args for t in tasks], ticks))


# --------------------------------------------------------------------------- statistics


def _bh(p: np.ndarray, alpha: float = 0.05) -> np.ndarray:
    """Benjamini-Hochberg rejections along the last axis (statsmodels' ``fdr_bh``)."""
    m = p.shape[-1]
    order = np.argsort(p, axis=-1)
    ranked = np.take_along_axis(p, order, axis=-1)
    below = ranked <= alpha * np.arange(1, m + 1) / m
    last = np.where(below.any(axis=-1), m - 1 - np.argmax(below[..., ::-1], axis=-1), -1)
    reject_ranked = np.arange(m) <= last[..., None]
    out = np.empty_like(reject_ranked)
    np.put_along_axis(out, order, reject_ranked, axis=-1)
    return out


def _binomial_tail(k: int, n: int, p: float = 0.05) -> float:
    """P(X >= k) for X ~ Binomial(n, p): RNC's ``1 - binom.cdf(k - 1, n, p)``."""
    return float(sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k, n + 1)))


def _stats(score_test: np.ndarray, baseline_test: np.ndarray, null_test: np.ndarray,
           controls: list[str], iterations: int, seed: int) -> dict[str, np.ndarray]:
    """RNC's ``06_stats.py`` for one pair and seed: ``score_test`` (control, subject,
    generation), ``baseline_test`` (subject), ``null_test`` (subject, null)."""
    n_sub = baseline_test.shape[0]
    final = score_test[:, :, -1]
    p = np.empty(final.shape)
    base_null = null_test[:, :iterations]
    for c, control in enumerate(controls):
        block = 1 + MULTIVARIATE_RNC_CONTROLS.index(control)  # RNC: align 2nd, disentangle 3rd
        diff_null = null_test[:, block * iterations:(block + 1) * iterations] - base_null
        observed = (final[c] - baseline_test)[:, None]
        beyond = (diff_null > observed) if control == "align" else (diff_null < observed)
        p[c] = (beyond.sum(axis=1) + 1) / (iterations + 1)
    significant = _bh(p.T).T  # corrected across the control conditions, per subject
    between = np.array([_binomial_tail(int(s.sum()), n_sub) for s in significant])
    rng = np.random.default_rng([seed, _SEED_STATS])
    pick = rng.integers(0, n_sub, (iterations, n_sub))
    means = final[:, pick].mean(axis=-1)  # (control, iteration)
    ci = np.percentile(means, [2.5, 97.5], axis=-1).T
    ci_base = np.percentile(baseline_test[pick].mean(axis=-1), [2.5, 97.5])
    return {"p_value": p, "significant": significant, "p_value_between": between,
            "score_test_ci": ci, "baseline_score_test_ci": ci_base}


# --------------------------------------------------------------------------- the result


def _assemble(results: dict[tuple[Any, ...], dict[str, np.ndarray]],
              nulls: dict[tuple[Any, ...], dict[str, np.ndarray]],
              pairs: list[tuple[str, str]], controls: list[str], seeds: list[int],
              subjects: list[int], labels: dict[str, Any], run: _Run, iterations: int,
              attrs: dict[str, Any]) -> xr.Dataset:
    """The results as one Dataset with every dim (the caller squeezes those given as
    scalars): searches over (pair, control, seed[, test_subject]), nulls over (pair,
    seed[, test_subject])."""
    cv = ("test_subject",) if run.cv else ()
    lead = ("pair", "control", "seed", *cv)
    nlead = ("pair", "seed", *cv)
    axes: dict[str, list[Any]] = {"pair": list(pairs), "control": controls, "seed": seeds,
            "test_subject": list(range(len(subjects))) if run.cv else [None]}

    def grid(source: dict[tuple[Any, ...], dict[str, np.ndarray]], dims: tuple[str, ...],
             key: str) -> np.ndarray:
        first = next(iter(source.values()))[key]
        out = np.empty((*(len(axes[d]) for d in dims), *first.shape), dtype=first.dtype)
        for k, value in source.items():
            at = tuple(axes[d].index(v) for d, v in zip(dims, k, strict=True))
            out[at] = value[key]
        return out

    def labelled(index: np.ndarray, dims: tuple[str, ...], prefix: str
                 ) -> dict[Hashable, Any]:
        return {f"{prefix}{name}": (dims, np.asarray(var.values)[index], var.attrs)
                for name, var in labels.items()}

    search_dims = ("pair", "control", "seed", "test_subject")
    def per_search(key: str) -> np.ndarray:  # (pair, control, seed[, test_subject], ...)
        arr = grid(results, search_dims, key)
        return arr if run.cv else arr[:, :, :, 0]

    index, scores = per_search("batches"), per_search("scores")
    gen = (*lead, "generation")
    data: dict[Hashable, Any] = {"score": (gen, scores),
                                 "image_index": ((*gen, "batch_image"), index),
                                 **labelled(index, (*gen, "batch_image"), "")}
    if run.cv:
        data["score_test"] = (gen, per_search("test"))
    if run.refine:
        refined = per_search("refined")
        data.update({"refined_score": (lead, per_search("refined_score")),
                     "refined_image_index": ((*lead, "batch_image"), refined),
                     **labelled(refined, (*lead, "batch_image"), "refined_"),
                     "refined_swaps": (lead, per_search("refined_swaps"))})
        if run.cv:
            data["refined_score_test"] = (lead, per_search("refined_test"))
    if nulls:
        def per_fold(key: str) -> np.ndarray:  # (pair, seed, fold, ...) or (pair, seed, ...)
            arr = grid(nulls, ("pair", "seed"), key)
            return arr if run.cv else arr[:, :, 0]

        base = per_fold("baseline")
        data.update({
            "baseline_score": (nlead, per_fold("baseline_score")),
            "baseline_image_index": ((*nlead, "batch_image"), base),
            **labelled(base, (*nlead, "batch_image"), "baseline_"),
            "null_distribution": ((*nlead, "null_sample"), per_fold("null")),
        })
        if run.cv:
            data["baseline_score_test"] = (nlead, per_fold("baseline_score_test"))
            data["null_distribution_test"] = ((*nlead, "null_sample"), per_fold("null_test"))
            score_test = data["score_test"][1]
            stats = {(p, s): _stats(score_test[i, :, j], nulls[p, s]["baseline_score_test"],
                                    nulls[p, s]["null_test"], controls, iterations, s)
                     for i, p in enumerate(pairs) for j, s in enumerate(seeds)}
            # _stats gives (control, ...) per pair and seed: put control before seed
            for key, dims in (("p_value", lead), ("significant", lead),
                              ("p_value_between", lead[:3]),
                              ("score_test_ci", (*lead[:3], "bound"))):
                data[key] = (dims, np.moveaxis(grid(stats, ("pair", "seed"), key), 2, 1))
            data["baseline_score_test_ci"] = (("pair", "seed", "bound"),
                                              grid(stats, ("pair", "seed"),
                                                   "baseline_score_test_ci"))
    coords: dict[Hashable, Any] = {
        "pair": [f"{a}-{b}" for a, b in pairs],
        "roi_1": ("pair", [a for a, _ in pairs]), "roi_2": ("pair", [b for _, b in pairs]),
        "control": controls, "seed": seeds,
        "generation": np.arange(1, run.generations + 1),
    }
    if run.cv:
        coords["test_subject"] = subjects
        if nulls:
            coords["bound"] = [2.5, 97.5]
    return xr.Dataset(data, coords=coords, attrs=attrs)
