"""The ``dream`` and ``saliency`` commands: images and attributions through the encoders,
written as PNGs (and, with ``--out``, as NetCDF or Zarr) under the rules of
:mod:`nest_data._output`."""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nest_data._cli import _command, _entry_keys, _location_options, _options, _progress

__all__ = ["add_dream", "add_saliency", "dream_command", "saliency_command"]


def _outputs(args: argparse.Namespace, names: Sequence[str]) -> list[Path]:
    """Check ``--out`` and the PNGs ``names`` under ``--png-dir`` before any work."""
    from nest_data._output import IMAGE_SUFFIXES, check_output

    if args.out is not None:
        check_output(args.out, overwrite=args.overwrite)
    return [check_output(Path(args.png_dir) / name, overwrite=args.overwrite,
                         suffixes=IMAGE_SUFFIXES) for name in names]


def _file_part(text: str) -> str:
    """``text`` as part of a file name (letters, digits, ``-``, ``_``, ``.``)."""
    return re.sub(r"[^\w.\-]+", "_", text).strip("_") or "x"


def dream_command(args: argparse.Namespace) -> int:
    """``nest-data dream``: one PNG per dreamed image, and the whole tree at ``--out``."""
    import nest_data
    from nest_data._output import write_image, write_output

    target = args.roi or ("eeg" if args.modality == "eeg" else args.train_dataset or "mean")
    stem = f"dream_sub-{args.subject:02d}_{_file_part(target)}"
    pngs = _outputs(args, [f"{stem}_{i}.png" for i in range(args.n)])
    tree = nest_data.dream(subject=args.subject, roi=args.roi, modality=args.modality,
                           train_dataset=args.train_dataset, n=args.n, steps=args.steps,
                           size=args.size, lr=args.lr, seed=args.seed,
                           parametrisation=args.parametrisation, location=args.location,
                           storage_options=_options(args.storage_option),
                           backbone=args.backbone, device=args.device,
                           show_progress=_progress(args))
    images = np.asarray(tree["images"])  # (image, rgb, y, x) in [0, 1]
    pixels = np.round(images.transpose(0, 2, 3, 1) * 255).astype(np.uint8)
    for png, image, score in zip(pngs, pixels, np.asarray(tree["score"]), strict=True):
        write_image(image, png, overwrite=args.overwrite)
        print(f"{png}\tobjective {float(score):+.6g}")
    if args.out is not None:
        print(f"{write_output(tree, args.out, overwrite=args.overwrite)}: images, score, "
              "objective per step, and each target's responses")
    return 0


def saliency_command(args: argparse.Namespace) -> int:
    """``nest-data saliency``: one PNG per image (the image beside its map), and the maps
    at ``--out``."""
    import nest_data
    from nest_data._images import as_images
    from nest_data._output import write_image, write_output

    names = [Path(image).name for image in args.images]
    stems = [_file_part(Path(name).stem) for name in names]
    if len(set(stems)) < len(stems):  # the same name in two folders: number them
        names = [f"{i}_{name}" for i, name in enumerate(names)]
        stems = [f"{i}_{stem}" for i, stem in enumerate(stems)]
    pngs = _outputs(args, [f"saliency_{stem}.png" for stem in stems])
    try:
        baseline: str | float = float(args.baseline)
    except ValueError:
        baseline = args.baseline
    arrays = as_images(list(args.images))
    maps = nest_data.saliency(
        np.stack(arrays) if len({a.shape for a in arrays}) == 1 else list(args.images),
        subject=args.subject, roi=args.roi, modality=args.modality,
        train_dataset=args.train_dataset, baseline=baseline, steps=args.steps,
        batch_size=args.batch_size, image_ids=names, location=args.location,
        storage_options=_options(args.storage_option), backbone=args.backbone,
        device=args.device, show_progress=_progress(args))
    for index, (png, pixels) in enumerate(zip(pngs, arrays, strict=True)):
        one = maps.isel(image=index)
        write_image(_saliency_figure(pixels, one), png, overwrite=args.overwrite)
        print(f"{png}\tscore {float(one.score):+.6g}, baseline {float(one.baseline_score):+.6g}")
    if args.out is not None:
        print(f"{write_output(maps, args.out, overwrite=args.overwrite)}: {maps.dims} "
              f"{maps.shape}")
    return 0


def _saliency_figure(pixels: np.ndarray, one: Any) -> Any:
    """The image beside its saliency map (summed over colours) with a colorbar, as a PIL
    image."""
    import io

    from PIL import Image

    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError("saliency PNGs need matplotlib: pip install 'nest-data[plot]'"
                          ) from exc
    from nest_data._plot import plot_saliency

    image = pixels.transpose(1, 2, 0)
    fig = Figure(figsize=(8, 3.6))
    left, right = fig.subplots(1, 2)
    left.imshow(image)
    left.set_title(f"{one.image.item()}\nscore {float(one.score):+.4g}", fontsize=9)
    left.set_xticks([])
    left.set_yticks([])
    plot_saliency(right, image, one.sum("rgb").values)
    right.set_title(f"{one.attrs.get('objective', '')}: integrated gradients\n"
                    f"baseline {one.attrs.get('baseline')}, {one.attrs.get('steps')} steps",
                    fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    buffer.seek(0)
    return Image.open(buffer)


def _gradient_options(parser: argparse.ArgumentParser, what: str) -> None:
    """Where the weights are, the device, and the outputs of dream and saliency."""
    _location_options(parser, "converted weights")
    parser.add_argument("--backbone", help="converted ViT-B/32 weights for EEG and fsaverage "
                                           "(default: the location's, or NEST_DATA_VIT_B_32)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, or auto")
    parser.add_argument("--png-dir", default=".", metavar="DIR",
                        help="folder for the PNGs (default: .)")
    parser.add_argument("--out", help=f"also write {what}: FILE.nc (NetCDF) or FOLDER.zarr. "
                                      "Outputs are written whole or not at all; one nest-data "
                                      "wrote is replaced, anything else only with --overwrite")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace files at --out or PNGs that nest-data did not write")


def add_dream(sub: Any) -> None:
    """Add the ``dream`` command to the commands ``sub``."""
    dream = _command(sub, "dream", "optimise images for an ROI's (or the EEG model's) mean "
                                   "response through its encoder; write them as PNGs",
                     epilog="example:\n"
                            "  nest-data dream --subject 1 --roi FFA-1 --location demo \\\n"
                            "      --png-dir dreams --out dreams/ffa.nc\n\n"
                            "Other objectives (contrasts, diversity) are in Python:\n"
                            "nest_data.dream(nest_data.objectives...).\n"
                            "Needs torch: pip install 'nest-data[encode]'.\n")
    _entry_keys(dream, "the ROI whose mean response is raised")
    dream.add_argument("--n", type=int, default=4, help="images optimised together "
                                                        "(default: 4)")
    dream.add_argument("--steps", type=int, default=256,
                       help="optimisation steps (default: 256)")
    dream.add_argument("--size", type=int, default=227,
                       help="pixels per side, 16 to 4096 (default: 227)")
    dream.add_argument("--lr", type=float, default=0.05,
                       help="Adam's learning rate (default: 0.05)")
    dream.add_argument("--seed", type=int, default=0, help="seed of the initial images and "
                                                           "transforms (default: 0)")
    dream.add_argument("--parametrisation", choices=["fourier", "pixel"], default="fourier",
                       help="how images are optimised (default: fourier)")
    _gradient_options(dream, "the images, their scores, the objective at every step and "
                             "each target's responses")
    dream.set_defaults(func=dream_command)


def add_saliency(sub: Any) -> None:
    """Add the ``saliency`` command to the commands ``sub``."""
    sal = _command(sub, "saliency", "which pixels of each image drive an ROI's mean response "
                                    "(integrated gradients); one PNG per image",
                   epilog="example:\n"
                          "  nest-data saliency face.jpg house.jpg --subject 1 --roi FFA-1 "
                          "\\\n      --location demo --png-dir maps\n\n"
                          "Needs torch: pip install 'nest-data[encode]';\n"
                          "the PNGs need matplotlib: pip install 'nest-data[plot]'.\n")
    sal.add_argument("images", nargs="+", help="image files of one size (any format Pillow "
                                              "reads; non-square ones are center-cropped)")
    _entry_keys(sal, "the ROI whose mean response is explained")
    sal.add_argument("--baseline", default="black",
                     help="black (default), grey, white, or a number in [0, 1]: the image "
                          "attributions are relative to")
    sal.add_argument("--steps", type=int, default=64,
                     help="intervals of the path integral (default: 64)")
    sal.add_argument("--batch-size", type=int, default=16,
                     help="path points per forward pass (default: 16)")
    _gradient_options(sal, "the attributions (image, rgb, y, x)")
    sal.set_defaults(func=saliency_command)
