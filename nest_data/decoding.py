"""Image decoding from responses, as neuralbench frames it: decode, then retrieve the image.

A decoder maps each image's responses (fsaverage5 vertices, voxels, EEG values) to an
embedding of the image by a vision backbone; it is scored by *retrieval* among the held-out
images: for every test image, the test images are ranked by the cosine similarity of their
embedding to the decoded one, and top-k accuracy is the fraction of test images whose own
embedding ranks in the first k (chance: k / number of test images).  On NSD the held-out
images are the 1,000 that all eight subjects saw (the ``shared1000`` coordinate).

- :func:`image_embeddings`: ViT-B/32 embeddings of images with the backbone nest-data
  encodes with (one block's tokens, averaged, as neuralbench aggregates its backbone's);
- :func:`heldout_split`: training and test images of an entry (NSD's shared 1,000 held out);
- :func:`decode_images`: fit a ridge or a contrastive (CLIP-style) linear decoder on the
  training responses and score retrieval on the test responses.

Training reads batches of responses: any iterable of dicts with ``"responses"`` (a float
tensor ``(B, n)``) and ``"image"`` (the images' labels), as a ``torch.utils.data.DataLoader``
over :mod:`nest_data.torch`'s datasets yields them, or an entry (a DataArray), read a batch
at a time.  Needs torch (``pip install 'nest-data[encode]'``); this module imports it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence, Sized
from typing import Any

import numpy as np
import xarray as xr

from nest_data import _config
from nest_data.analysis.selection import image_positions, select_images
from nest_data.errors import InputError

try:
    import torch
except ImportError as exc:  # pragma: no cover - the encode extra is missing
    raise ImportError("nest_data.decoding needs torch: pip install 'nest-data[encode]'"
                      ) from exc

logger = logging.getLogger("nest_data")

__all__ = ["DECODERS", "decode_images", "heldout_split", "image_embeddings"]

#: The decoders :func:`decode_images` fits.
DECODERS = ("ridge", "clip")
#: Ridge penalties tried by default (on standardised responses), chosen on a validation
#: split of the training images.
RIDGE_ALPHAS = (1e-1, 1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7)
#: Fraction of the training images held out to choose the ridge penalty (neuralbench's
#: validation ratio), and the seed of that split.
VALIDATION_FRACTION = 0.2
#: The backbone block whose tokens :func:`image_embeddings` averages by default: two thirds
#: of ViT-B/32's 12 blocks, the depth neuralbench reads its image backbone at.
EMBEDDING_BLOCK = 8

Batch = Mapping[str, Any]


@_config.progress_option
def image_embeddings(
    images: Any,
    *,
    image_ids: Sequence[str] | None = None,
    block: int = EMBEDDING_BLOCK,
    location: str | None = None,
    backbone: str | os.PathLike[str] | None = None,
    batch_size: int = 16,
    device: str = "cpu",
    show_progress: bool | None = None,
) -> xr.DataArray:
    """ViT-B/32 embeddings of images: one block's 50 tokens averaged, ``(image, feature)``.

    The backbone is torchvision's ImageNet ViT-B/32 that nest-data's ViT encoders use,
    converted: ``backbone`` (a converted folder or a ``.safetensors`` file), else the
    ``NEST_DATA_VIT_B_32`` environment variable, else the one at ``location``.  Images are
    preprocessed as for those encoders (ImageNet's resize 256, center crop 224).

    Parameters
    ----------
    images : array, PIL image, path, or a list of them
        RGB images as :func:`nest_data.encode` takes them.
    image_ids : sequence of str, optional
        Labels of the images (default: file names for paths, content hashes otherwise):
        they must be the ``image`` labels of the responses to decode.
    block : int
        Which of the 12 blocks (1 to 12) to read.
    location, backbone : str, optional
        Where the converted backbone is (see above).
    batch_size : int
        Images per forward pass.
    device : str
        ``"cpu"``, ``"cuda"`` or ``"auto"``.
    show_progress : bool, optional
        A progress bar over batches.

    Returns
    -------
    xarray.DataArray
        ``(image, feature)`` float32, 768 features, labelled by ``image_ids``.

    Examples
    --------
    >>> import nest_data
    >>> from nest_data.decoding import image_embeddings
    >>> images = nest_data.synthetic.test_images(2, 64)
    >>> image_embeddings(images, image_ids=["a", "b"], location="demo").sizes
    Frozen({'image': 2, 'feature': 768})
    """
    from tqdm.auto import tqdm

    from nest_data._images import as_images, content_hash, image_labels
    from nest_data._models import torch_device
    from nest_data.encoders.vit import LAYERS, preprocess_imagenet
    from nest_data.encoders.weights import load_backbone

    if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or not (
            1 <= block <= LAYERS):
        raise InputError(f"block={block!r}: ViT-B/32 has blocks 1 to {LAYERS}; give one of "
                         f"them (default {EMBEDDING_BLOCK}, two thirds of the depth)")
    _check_positive(batch_size=batch_size)
    pixels = as_images(images)
    ids = list(image_ids) if image_ids is not None else image_labels(
        images, [content_hash(p) for p in pixels])
    if len(ids) != len(pixels) or len(set(ids)) != len(ids):
        raise InputError(f"image_ids: give {len(pixels)} distinct labels, one per image; got "
                         f"{len(ids)} ({len(set(ids))} distinct)")
    model, _ = load_backbone(_backbone_url(location, backbone))
    target = torch_device(device)
    model = model.to(target).requires_grad_(False)
    hidden = model.encoder.pos_embedding.shape[-1]
    tokens = model.encoder.pos_embedding.shape[1]
    out = []
    starts = range(0, len(pixels), batch_size)
    for start in tqdm(starts, desc="image embeddings", unit="batch",
                      disable=not _config.show_progress()):
        batch = torch.from_numpy(np.stack(pixels[start:start + batch_size]))
        with torch.no_grad():
            features = model.features(preprocess_imagenet(batch).to(target))
        width = tokens * hidden
        block_tokens = features[:, (block - 1) * width:block * width].reshape(-1, tokens, hidden)
        out.append(block_tokens.mean(1).cpu().numpy())
    return xr.DataArray(
        np.concatenate(out).astype(np.float32), dims=("image", "feature"),
        coords={"image": np.asarray(ids, dtype=str)},
        attrs={"backbone": "torchvision ViT-B/32 (IMAGENET1K_V1), as converted for nest-data",
               "embedding": f"mean of the 50 tokens after block {block} of 12"})


def _backbone_url(location: str | None, backbone: str | os.PathLike[str] | None) -> str:
    """The converted ViT-B/32: argument, then ``NEST_DATA_VIT_B_32``, then the location's."""
    from nest_data._catalog import catalog
    from nest_data._models import ENV_BACKBONE

    if backbone is not None:
        return os.fspath(backbone)
    if os.environ.get(ENV_BACKBONE):
        return os.environ[ENV_BACKBONE]
    cat = catalog()
    path = next(spec.backbone_path for spec in cat.models if spec.backbone_path)
    return cat.location(location).join(path)


def heldout_split(responses: xr.DataArray, test: Any = None
                  ) -> tuple[xr.DataArray, xr.DataArray]:
    """Training and test images of an entry: NSD's shared 1,000 images held out by default.

    Parameters
    ----------
    responses : xarray.DataArray
        An entry with an ``image`` dimension.
    test : array-like of bool or int, or slice, optional
        The test images (a mask or positions along ``image``).  Default: the entry's
        ``shared1000`` coordinate (nsd entries), as neuralbench holds NSD's shared images out.

    Returns
    -------
    (xarray.DataArray, xarray.DataArray)
        The training and the test images' responses, lazy, each image in exactly one.

    Raises
    ------
    InputError
        No ``test`` and no ``shared1000`` coordinate, or a split that leaves either side
        empty.

    Examples
    --------
    >>> import nest_data
    >>> from nest_data.decoding import heldout_split
    >>> v1 = nest_data.open(imageset="nsd", subject=1, roi="V1", location="demo")
    >>> train, test = heldout_split(v1)
    >>> bool(test.shared1000.all()), bool((~train.shared1000).all())
    (True, True)
    """
    if not isinstance(responses, xr.DataArray) or "image" not in responses.dims:
        raise InputError(f"heldout_split takes an entry (a DataArray with an 'image' "
                         f"dimension); got {type(responses).__name__}")
    if test is None:
        if "shared1000" not in responses.coords:
            raise InputError("the entry has no 'shared1000' coordinate (only nsd entries "
                             "do); give the test images: test= a boolean mask or positions "
                             "along 'image'")
        test = responses.shared1000.values
    is_test = np.zeros(responses.sizes["image"], dtype=bool)
    is_test[image_positions(responses, test)] = True
    if is_test.all() or not is_test.any():
        raise InputError(f"the split holds {int(is_test.sum())} of {is_test.size} images out "
                         "for testing; both sides need images: give test= a proper subset")
    return (select_images(responses, np.flatnonzero(~is_test)),
            select_images(responses, np.flatnonzero(is_test)))


@_config.progress_option
def decode_images(
    train: xr.DataArray | Iterable[Batch],
    test: xr.DataArray | Iterable[Batch],
    embeddings: xr.DataArray,
    *,
    decoder: str = "ridge",
    alphas: Sequence[float] = RIDGE_ALPHAS,
    epochs: int = 50,
    learning_rate: float = 1e-3,
    temperature: float = 0.1,
    batch_size: int = 128,
    top_k: Sequence[int] = (1, 5),
    seed: int = 0,
    device: str = "cpu",
    show_progress: bool | None = None,
) -> xr.Dataset:
    """Decode image embeddings from responses and score retrieval among the test images.

    The decoder is linear on the responses standardised with the training images' mean and
    standard deviation.  ``"ridge"`` regresses the embeddings (the penalty chosen among
    ``alphas`` by top-5 retrieval on a seeded 20% of the training images, then refitted on
    all); ``"clip"`` is trained with a contrastive loss (each decoded embedding against
    the batch's image embeddings, cosine similarities over ``temperature``, cross-entropy
    towards its own image), with Adam for ``epochs`` passes over ``train``.  Test responses
    of one image (repetitions, several batches) are averaged before retrieval; the
    candidates are the test images' embeddings.

    Parameters
    ----------
    train, test : xarray.DataArray or iterable of dict
        Responses of the training and of the test images: an entry (``image`` first, all
        other dimensions flattened into features) or batches as a DataLoader yields them,
        dicts with ``"responses"`` (``(B, n)`` float tensor) and ``"image"`` (labels).  An
        iterable is read once (ridge, test) or ``epochs + 1`` times (clip), so it must
        be re-iterable (a DataLoader is; a generator is not); ``set_epoch(epoch)`` is
        called before each contrastive epoch on an iterable, its ``dataset`` or its
        ``sampler`` that has it (:class:`nest_data.torch.ResponseBatches`,
        ``DistributedSampler``), so each epoch is shuffled anew.  No image may be in both.
    embeddings : xarray.DataArray
        ``(image, feature)`` embeddings, labelled as the responses' images
        (:func:`image_embeddings`); an entry's images are labelled by its ``image_id``
        coordinate if it has one, else by its ``image`` values (as strings).
    decoder : {"ridge", "clip"}
    alphas : sequence of float
        Ridge penalties to choose from.
    epochs, learning_rate, temperature, batch_size : number
        Contrastive training; ``batch_size`` also sets how an entry is read.
    top_k : sequence of int
        The k of the top-k accuracies.
    seed : int
        Seeds the validation split and the contrastive training.
    device : str
        ``"cpu"``, ``"cuda"`` or ``"auto"``.
    show_progress : bool, optional
        Progress bars over batches and epochs.

    Returns
    -------
    xarray.Dataset
        ``accuracy`` and ``chance`` over ``k``; ``rank`` (1 = retrieved first) and
        ``retrieved`` (the labels of the first ``max(top_k)`` retrieved images) over the
        test ``image``; attrs name the decoder, its penalty, and the image counts.

    Raises
    ------
    InputError
        An unknown decoder, an image in both train and test, images without an embedding,
        batches without ``"responses"``/``"image"``, responses of differing widths,
        non-finite responses, or fewer test images than ``max(top_k)``.

    Examples
    --------
    >>> import nest_data
    >>> from nest_data.decoding import decode_images, heldout_split
    >>> v1 = nest_data.open(imageset="nsd", subject=1, roi="V1", location="demo")
    >>> train, test = heldout_split(v1, test=[0, 1, 2, 3, 4, 5])
    >>> import numpy as np, xarray as xr
    >>> emb = xr.DataArray(np.random.default_rng(0).normal(size=(24, 16)),
    ...                    dims=("image", "feature"), coords={"image": [str(i) for i in range(24)]})
    >>> result = decode_images(train, test, emb)
    >>> result.accuracy.sel(k=5).item() >= 0, result.chance.sel(k=1).item()
    (True, 0.16666666666666666)
    """
    if decoder not in DECODERS:
        raise InputError(f"decoder={decoder!r} is not one nest-data fits; valid are "
                         f"{', '.join(map(repr, DECODERS))}")
    _check_positive(epochs=epochs, batch_size=batch_size)
    ks = sorted({_positive_int(k, "top_k") for k in top_k})
    if not ks:
        raise InputError("top_k is empty; give the k of the accuracies, e.g. (1, 5)")
    alphas = [float(a) for a in alphas]
    if not alphas or min(alphas) <= 0:
        raise InputError(f"alphas={alphas}: give positive ridge penalties, e.g. "
                         f"{RIDGE_ALPHAS[:3]}")
    if not temperature > 0 or not learning_rate > 0:
        raise InputError(f"temperature={temperature} and learning_rate={learning_rate} must "
                         "be positive (defaults 0.1 and 1e-3)")
    from nest_data._models import torch_device

    target = torch_device(device)
    table = _EmbeddingTable(embeddings)
    train_x, train_ids = _collect(_batches(train, batch_size), "train")
    test_x, test_ids = _collect(_batches(test, batch_size), "test")
    _check_disjoint(train_ids, test_ids)
    if train_x.shape[1] != test_x.shape[1]:
        raise InputError(f"train responses have {train_x.shape[1]} values per image, test "
                         f"responses {test_x.shape[1]}: give both from the same entry (the "
                         "same vertices or voxels)")
    mean, std = train_x.mean(0, dtype=np.float64), train_x.std(0, dtype=np.float64)
    std[std == 0] = 1.0
    labels, test_x = _average_by_image(test_ids, (test_x - mean) / std)
    if len(labels) < ks[-1]:
        raise InputError(f"{len(labels)} test images cannot give top-{ks[-1]} accuracy; "
                         f"hold out more images or lower top_k")
    candidates = table.rows(labels)
    attrs: dict[str, Any] = {"decoder": decoder}
    if decoder == "ridge":
        weights, bias, alpha = _fit_ridge(((train_x - mean) / std).astype(np.float32),
                                          table.rows(train_ids), alphas, seed, target)
        attrs["alpha"] = alpha
    else:
        weights, bias = _fit_clip(train, batch_size, table, (mean, std), epochs,
                                  learning_rate, temperature, seed, target)
    scores = _cosine(torch.from_numpy(test_x).to(target) @ weights + bias,
                     torch.from_numpy(candidates).to(target))
    ranks = _ranks(scores)
    order = torch.argsort(scores, dim=1, descending=True)[:, :ks[-1]].cpu().numpy()
    attrs.update({"n_train": len(set(train_ids)), "n_test": len(labels),
                  "n_features": int(train_x.shape[1]),
                  "retrieval": "cosine similarity of decoded and image embeddings, among "
                               "the test images"})
    return xr.Dataset(
        {"accuracy": (("k",), [float((ranks <= k).mean()) for k in ks]),
         "chance": (("k",), [k / len(labels) for k in ks]),
         "rank": (("image",), ranks),
         "retrieved": (("image", "rank_position"), np.asarray(labels)[order])},
        coords={"k": ks, "image": labels, "rank_position": np.arange(1, ks[-1] + 1)},
        attrs=attrs)


class _EmbeddingTable:
    """Embedding rows by image label, with an error naming images that have none."""

    def __init__(self, embeddings: Any) -> None:
        if not isinstance(embeddings, xr.DataArray) or embeddings.ndim != 2 or (
                embeddings.dims[0] != "image"):
            raise InputError("embeddings: give an (image, feature) DataArray labelled by image "
                             "(nest_data.decoding.image_embeddings makes one); got "
                             f"{getattr(embeddings, 'dims', type(embeddings).__name__)}")
        values = np.asarray(embeddings.values, dtype=np.float32)
        if not np.isfinite(values).all():
            raise InputError("embeddings hold NaN or infinite values; give finite embeddings")
        self.values = values
        self.where = {str(label): i for i, label in enumerate(embeddings.image.values)}

    def rows(self, labels: Sequence[str]) -> np.ndarray:
        missing = [label for label in dict.fromkeys(labels) if label not in self.where]
        if missing:
            raise InputError(f"{len(missing)} images have no embedding (e.g. "
                             f"{missing[:3]}); the embeddings are labelled "
                             f"{list(self.where)[:3]}...: compute embeddings of every image, "
                             "labelled as the responses' images")
        return self.values[[self.where[label] for label in labels]]


def _batches(source: Any, batch_size: int) -> Iterable[Batch]:
    """Batches of ``source``: an iterable of dicts as it is, an entry read a batch at a time."""
    if isinstance(source, xr.DataArray):
        return _EntryBatches(source, batch_size)
    if isinstance(source, (xr.Dataset, np.ndarray, str, bytes, Mapping)) or not isinstance(
            source, Iterable):
        raise InputError(f"responses: give an entry (a DataArray with an 'image' dimension) "
                         f"or an iterable of batches (dicts with 'responses' and 'image', as "
                         f"a DataLoader over nest_data.torch yields); got "
                         f"{type(source).__name__}")
    return source


class _EntryBatches:
    """An entry as re-iterable batches: ``image`` first, other dimensions flattened."""

    def __init__(self, da: xr.DataArray, batch_size: int) -> None:
        if "image" not in da.dims:
            raise InputError(f"responses need an 'image' dimension; got dims {da.dims}")
        self.da = da.transpose("image", ...)
        self.batch_size = batch_size
        self.labels = _entry_labels(da)

    def __len__(self) -> int:
        return -(-self.da.sizes["image"] // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        n = self.da.sizes["image"]
        for start in range(0, n, self.batch_size):
            stop = min(start + self.batch_size, n)
            values = np.asarray(self.da.isel(image=slice(start, stop)).values, np.float32)
            yield {"responses": torch.from_numpy(values.reshape(stop - start, -1)),
                   "image": self.labels[start:stop], "index": np.arange(start, stop)}


def _entry_labels(da: xr.DataArray) -> list[str]:
    """Image labels of an entry: ``image_id`` when it has one, else ``image`` as strings."""
    name = "image_id" if "image_id" in da.coords else "image"
    return [str(label) for label in da.coords[name].values]


def _collect(batches: Iterable[Batch], what: str) -> tuple[np.ndarray, list[str]]:
    """All responses (float32, ``(N, n)``) and image labels of one pass over the batches."""
    from tqdm.auto import tqdm

    rows, labels = [], []
    total = len(batches) if isinstance(batches, Sized) else None
    for batch in tqdm(batches, desc=f"reading {what} responses", unit="batch", total=total,
                      disable=not _config.show_progress()):
        x, ids = _unpack(batch)
        rows.append(x)
        labels += ids
    if not rows:
        raise InputError(f"the {what} batches are empty: give at least one image (a "
                         "generator is spent after one pass; give a DataLoader or a list)")
    widths = {r.shape[1] for r in rows}
    if len(widths) > 1:
        raise InputError(f"{what} batches hold responses of {sorted(widths)} values per image; "
                         "give batches of one entry (one set of vertices or voxels)")
    return np.concatenate(rows), labels


def _unpack(batch: Any) -> tuple[np.ndarray, list[str]]:
    """``(responses (B, n) float32, labels)`` of one batch, checked."""
    if not isinstance(batch, Mapping) or "responses" not in batch or "image" not in batch:
        keys = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
        raise InputError(f"a batch must be a dict with 'responses' (a (B, n) tensor) and "
                         f"'image' (B labels); got {keys}")
    x = batch["responses"]
    x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    labels = [str(label) for label in batch["image"]]
    if x.ndim < 2 or x.shape[0] != len(labels):
        raise InputError(f"a batch's responses have shape {x.shape} for {len(labels)} image "
                         "labels; give (B, n) responses with one label per row")
    x = x.reshape(x.shape[0], -1).astype(np.float32)
    if not np.isfinite(x).all():
        raise InputError(f"responses of images {labels[:3]}... hold NaN or infinite values; "
                         "drop those images or fill the values before decoding")
    return x, labels


def _check_disjoint(train_ids: Sequence[str], test_ids: Sequence[str]) -> None:
    shared = sorted(set(train_ids) & set(test_ids))
    if shared:
        raise InputError(f"{len(shared)} images are in both train and test (e.g. "
                         f"{shared[:3]}): held-out images must never be trained on; split "
                         "the images with nest_data.decoding.heldout_split")


def _average_by_image(labels: Sequence[str], x: np.ndarray) -> tuple[list[str], np.ndarray]:
    """One row per distinct label (first-seen order): the mean of that image's rows."""
    unique = list(dict.fromkeys(labels))
    where = {label: i for i, label in enumerate(unique)}
    index = np.array([where[label] for label in labels])
    sums = np.zeros((len(unique), x.shape[1]))
    np.add.at(sums, index, x)
    return unique, (sums / np.bincount(index)[:, None]).astype(np.float32)


def _fit_ridge(x: np.ndarray, y: np.ndarray, alphas: Sequence[float], seed: int,
               device: Any) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Ridge weights ``(n, d)`` and intercept ``(d,)``, with the penalty of best validation
    top-5 retrieval."""
    alpha = alphas[0]
    if len(alphas) > 1:
        rng = np.random.default_rng(seed)
        is_val = np.zeros(len(x), dtype=bool)
        is_val[rng.permutation(len(x))[:max(1, round(VALIDATION_FRACTION * len(x)))]] = True
        if len(x) - is_val.sum() < 2:
            raise InputError(f"{len(x)} training images cannot choose among {len(alphas)} "
                             "penalties; give more images or one alpha")
        solver = _Ridge(x[~is_val], y[~is_val], device)
        val_x = torch.from_numpy(x[is_val].astype(np.float32)).to(device)
        val_y = torch.from_numpy(y[is_val]).to(device)
        k = min(5, int(is_val.sum()))
        scores = [float((_ranks(_cosine(val_x @ solver.weights(a) + solver.intercept,
                                        val_y)) <= k).mean()) for a in alphas]
        alpha = alphas[int(np.argmax(scores))]
        logger.info("ridge penalty %g (validation top-%d accuracy %.3f of %s)", alpha, k,
                    max(scores), dict(zip(alphas, scores, strict=True)))
    solver = _Ridge(x, y, device)
    return solver.weights(alpha), solver.intercept, alpha


class _Ridge:
    """Ridge regression of ``y`` on ``x`` for any penalty, from one eigendecomposition.

    Uses the smaller Gram matrix: ``x.T @ x`` when images outnumber features (primal),
    ``x @ x.T`` otherwise (dual), so thousands of vertices with hundreds of images cost a
    few hundred squared.  ``y`` is centred; ``x`` is standardised by the caller.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, device: Any) -> None:
        self.x = torch.from_numpy(np.asarray(x, np.float64)).to(device)
        y64 = torch.from_numpy(np.asarray(y, np.float64)).to(device)
        self.intercept = y64.mean(0).float()
        self.y = y64 - y64.mean(0)
        self.primal = self.x.shape[0] >= self.x.shape[1]
        gram = self.x.T @ self.x if self.primal else self.x @ self.x.T
        self.s, self.u = torch.linalg.eigh(gram)
        self.s = self.s.clamp(min=0)
        self.proj = self.u.T @ (self.x.T @ self.y if self.primal else self.y)

    def weights(self, alpha: float) -> torch.Tensor:
        inner = self.u @ (self.proj / (self.s + alpha)[:, None])
        return (inner if self.primal else self.x.T @ inner).float()


def _fit_clip(train: Any, batch_size: int, table: _EmbeddingTable,
              scaling: tuple[np.ndarray, np.ndarray], epochs: int, learning_rate: float,
              temperature: float, seed: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """A linear decoder trained contrastively over ``epochs`` passes of the batches."""
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    mean, std = (torch.from_numpy(v.astype(np.float32)).to(device) for v in scaling)
    layer = torch.nn.Linear(len(mean), table.values.shape[1]).to(device)
    optimiser = torch.optim.Adam(layer.parameters(), lr=learning_rate)
    for epoch in tqdm(range(epochs), desc="contrastive training", unit="epoch",
                      disable=not _config.show_progress()):
        _set_epoch(train, epoch)
        n_batches = 0
        for batch in _batches(train, batch_size):
            n_batches += 1
            x, labels = _unpack(batch)
            if len(set(labels)) < 2:
                continue  # a lone image has no negatives to contrast with
            target = torch.from_numpy(table.rows(labels)).to(device)
            decoded = layer((torch.from_numpy(x).to(device) - mean) / std)
            logits = _cosine(decoded, target) / temperature
            same = torch.tensor([[a == b for b in labels] for a in labels], device=device)
            # a repeated image in a batch is a positive, not a negative, of its own rows
            logits = logits.masked_fill(same & ~torch.eye(len(labels), dtype=torch.bool,
                                                          device=device), float("-inf"))
            loss = torch.nn.functional.cross_entropy(logits, torch.arange(len(labels),
                                                                          device=device))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        if not n_batches:
            raise InputError(f"the train batches were empty on pass {epoch + 2} (a generator "
                             "is spent after one pass): give a DataLoader or a list")
    return layer.weight.detach().T.contiguous(), layer.bias.detach()


def _set_epoch(source: Any, epoch: int) -> None:
    """Tell a loader the epoch, as ``DistributedSampler`` and
    :class:`nest_data.torch.ResponseBatches` expect, so each epoch has its own order."""
    for part in (source, getattr(source, "dataset", None), getattr(source, "sampler", None)):
        set_epoch = getattr(part, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarities ``(len(a), len(b))``."""
    a = torch.nn.functional.normalize(a.float(), dim=1)
    b = torch.nn.functional.normalize(b.float(), dim=1)
    return a @ b.T


def _ranks(scores: torch.Tensor) -> np.ndarray:
    """Rank (1 = first) of each row's own column ``i`` among row ``i``'s scores; a tie
    counts against it (constant decoded embeddings rank last, not first)."""
    own = scores.diagonal()[:, None]
    return (scores >= own).sum(1).cpu().numpy()


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name}={value!r}: give a positive integer")
    return int(value)


def _check_positive(**values: Any) -> None:
    for name, value in values.items():
        _positive_int(value, name)
