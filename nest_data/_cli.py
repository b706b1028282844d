"""The ``nest-data`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from nest_data._redact import redact_url
from nest_data.errors import ConversionError, InputError, NestDataError

__all__ = ["main"]


def _progress(args: argparse.Namespace) -> bool | None:
    return False if args.no_progress else None


def _options(pairs: Sequence[str] | None) -> dict[str, Any]:
    """``KEY=VALUE`` pairs -> storage options; values parsed as JSON when they can be."""
    out: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise NestDataError(f"--storage-option {pair!r} is not KEY=VALUE; e.g. "
                                "--storage-option anon=true")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def _cmd_demo(args: argparse.Namespace) -> int:
    from nest_data._demo import build_demo, run_demo

    if args.dest:
        dest = build_demo(dest=args.dest, storage_options=_options(args.storage_option),
                          n_images=args.n_images, show_progress=_progress(args))
        print(f"demo collection written to {dest} (synthetic values)")
        return 0
    if args.rebuild:
        build_demo(rebuild=True, show_progress=_progress(args), n_images=args.n_images)
    result = run_demo(args.out, imageset=args.imageset, subject=args.subject, roi=args.roi,
                      k=args.k, show_progress=_progress(args))
    print(result.summary)
    return 0


def _cmd_convert_ned(args: argparse.Namespace) -> int:
    from nest_data.converters.ned import convert_ned

    report = convert_ned(args.src, args.dest, modality=args.modality, subject=args.subject,
                         roi=args.roi, imageset=args.imageset, workers=args.workers,
                         overwrite=args.overwrite, verify_existing=not args.no_verify_existing,
                         storage_options=_options(args.storage_option),
                         show_progress=_progress(args))
    print(f"{redact_url(args.dest)}: {report}")
    return 0


def _cmd_convert_weights(args: argparse.Namespace) -> int:
    from nest_data.converters.weights import convert_weights

    if args.src is None and args.vit_b_32 is None:
        raise ConversionError("give SRC (NEST's root with encoding_models/) or --vit-b-32 FILE "
                              "(torchvision's vit_b_32 weights), or both")
    written = convert_weights(args.src, args.dest, modality=args.modality,
                              trust_pickles=args.trust_pickles, subject=args.subject,
                              roi=args.roi, vit_b_32=args.vit_b_32,
                              storage_options=_options(args.storage_option),
                              source_options=_options(args.source_option),
                              show_progress=_progress(args))
    for rel in written:
        print(f"{args.dest}/{rel}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from nest_data._verify import verify

    report = verify(args.root, storage_options=_options(args.storage_option),
                    show_progress=_progress(args))
    for problem in report.problems:
        print(f"MISMATCH {problem}")
    print(f"{report.stores} store(s) checked under {redact_url(args.root)}: "
          + ("all checksums match" if report.ok else f"{len(report.problems)} problem(s)"))
    return 0 if report.ok else 1


def _cmd_index(args: argparse.Namespace) -> int:
    from nest_data._verify import build_index

    index = build_index(args.root, storage_options=_options(args.storage_option),
                        show_progress=_progress(args))
    total = sum(r.nbytes for r in index.stores.values())
    print(f"{redact_url(args.root)}: indexed {len(index.stores)} store(s), {total / 1e6:.1f} MB")
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from nest_data._generate import generate

    kwargs = {"imageset": args.imageset, "subject": args.subject, "roi": args.roi,
              "modality": args.modality, "train_dataset": args.train_dataset,
              "chunk_vertices": args.chunk_vertices,
              "location": args.location, "backbone": args.backbone,
              "storage_options": _options(args.storage_option),
              "chunk_images": args.chunk_images, "batch_size": args.batch_size,
              "device": args.device, "show_progress": _progress(args)}
    if args.scheduler or args.workers:
        from distributed import Client, LocalCluster

        if args.scheduler:
            with Client(args.scheduler) as client:
                url = generate(args.images, args.dest, client=client, **kwargs)
        else:
            if not args.verbose:  # distributed logs its start-up at INFO
                logging.getLogger("distributed").setLevel(logging.WARNING)
            with LocalCluster(n_workers=args.workers, threads_per_worker=1,
                              scheduler_kwargs={"dashboard": False},
                              silence_logs=logging.WARNING) as cluster, \
                    Client(cluster) as client:
                url = generate(args.images, args.dest, client=client, **kwargs)
    else:
        url = generate(args.images, args.dest, **kwargs)
    print(url)
    return 0


def _cmd_encode(args: argparse.Namespace) -> int:
    from nest_data._encode import encode
    from nest_data._output import check_output, write_output

    if args.out is not None:  # before any encoding
        check_output(args.out, overwrite=args.overwrite)
    elif args.overwrite:
        raise InputError("--overwrite replaces what is at --out, and no --out was given; "
                         "add --out FILE.nc or --out FOLDER.zarr, or drop --overwrite")
    da = encode(list(args.images), subject=args.subject, roi=args.roi,
                modality=args.modality, train_dataset=args.train_dataset,
                location=args.location, storage_options=_options(args.storage_option),
                batch_size=args.batch_size, device=args.device,
                show_progress=_progress(args))
    if args.out is not None:
        out = write_output(da, args.out, overwrite=args.overwrite)
        print(f"{out}: {da.dims} {da.shape}")
        return 0
    reduce = [d for d in da.dims if d != "image"]
    means = da.mean(reduce).values
    for name, value in zip(da.image.values, means, strict=True):
        print(f"{name}\t{value:.6g}")
    print(f"mean over {', '.join(map(str, reduce))} of {da.attrs.get('roi') or da.name} "
          f"responses; --out FILE keeps all {int(np.prod(da.shape[1:]))} per image")
    return 0


def _cmd_mirror(args: argparse.Namespace) -> int:
    from nest_data._mirror import mirror

    report = mirror(args.dest, location=args.location,
                    storage_options=_options(args.storage_option), workers=args.workers,
                    show_progress=_progress(args), modality=args.modality,
                    imageset=args.imageset, subject=args.subject, roi=args.roi)
    print(f"{args.dest}: {report}")
    if report.absent:
        print(f"not at the source ({len(report.absent)}): " + ", ".join(report.absent))
    return 0


def _cmd_cache(args: argparse.Namespace) -> int:
    from nest_data._cache import ChunkCache

    cache = ChunkCache()
    if args.action == "clear":
        print(f"freed {cache.clear() / 1e6:.1f} MB in {cache.path}")
    else:
        print(cache.info())
    return 0


def _cmd_catalog(args: argparse.Namespace) -> int:
    from nest_data._catalog import KEYS, catalog

    options = _options(args.storage_option) or None
    cat = catalog(*args.catalog).search(modality=args.modality, imageset=args.imageset,
                                        subject=args.subject, roi=args.roi,
                                        location=args.location, storage_options=options)
    if args.intake_esm:
        path = cat.to_intake_esm(args.intake_esm, location=args.location,
                                 storage_options=options)
        print(f"wrote {path} and {path.with_suffix('.csv')}")
        return 0
    columns = [*KEYS, "n_images"] if not args.all_columns else list(cat.df.columns)
    print(cat.df[columns].to_string(max_rows=args.max_rows, index=False))
    where = f" at {redact_url(args.location)}" if args.location else ""
    print(f"{len(cat)} entries{where}; locations: {', '.join(sorted(cat.locations))}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nest-data", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="build the synthetic demo collection and run the main "
                                       "job on it")
    demo.add_argument("--out", default=".", help="folder for the figure (default: .)")
    demo.add_argument("--imageset", default="things")
    demo.add_argument("--subject", type=int, default=1)
    demo.add_argument("--roi", default="V1")
    demo.add_argument("-k", type=int, default=5, help="number of top images to list")
    demo.add_argument("--rebuild", action="store_true", help="rebuild the demo collection")
    demo.add_argument("--n-images", type=int, default=24,
                      help="images per image set, 1 to 1000 (with --rebuild or --dest)")
    demo.add_argument("--dest", help="write the demo collection to this folder or URL "
                                     "(s3://, gs://) instead of running the main job")
    demo.add_argument("--storage-option", action="append", metavar="KEY=VALUE")
    demo.set_defaults(func=_cmd_demo)

    convert = sub.add_parser("convert", help="convert original NEST-family files")
    convert_sub = convert.add_subparsers(dest="source", required=True)
    ned = convert_sub.add_parser("ned", help="NED pre-generated responses (HDF5 + .npy)")
    ned.add_argument("src", help="folder holding pregenerated_insilico_neural_responses/")
    ned.add_argument("dest", help="root folder of the collection to write")
    ned.add_argument("--modality", nargs="+")
    ned.add_argument("--subject", nargs="+", type=int)
    ned.add_argument("--roi", nargs="+")
    ned.add_argument("--imageset", nargs="+")
    ned.add_argument("--workers", type=int, help="parallel processes (default: CPUs, max 4)")
    ned.add_argument("--overwrite", action="store_true", help="reconvert complete entries")
    ned.add_argument("--no-verify-existing", action="store_true",
                     help="skip complete entries without re-checking their checksums")
    ned.add_argument("--storage-option", action="append", metavar="KEY=VALUE",
                     help="fsspec option for a remote DEST (repeatable), e.g. anon=false")
    ned.set_defaults(func=_cmd_convert_ned)

    weights = convert_sub.add_parser(
        "weights", help="NEST/BERG encoder weights (fwRF .pt, EEG and fsaverage .npy, "
                        "torchvision's vit_b_32) -> safetensors")
    weights.add_argument("src", nargs="?", help="NEST's or BERG's root holding "
                                                "encoding_models/: a folder or a remote URL "
                                                "(s3://brain-encoding-response-generator)")
    weights.add_argument("dest", help="root to write weights/ folders into")
    weights.add_argument("--trust-pickles", action="store_true",
                         help="required for fMRI: the .pt files are pickles, which can run "
                              "code; give it only for files from a source you trust")
    weights.add_argument("--modality", choices=["fmri", "eeg"],
                         help="convert only this modality (default: all found)")
    weights.add_argument("--vit-b-32", metavar="FILE",
                         help="torchvision's vit_b_32 weights (vit_b_32-d86f8d99.pth), the "
                              "backbone of the EEG and fsaverage encoders")
    weights.add_argument("--subject", nargs="+", type=int)
    weights.add_argument("--roi", nargs="+")
    weights.add_argument("--storage-option", action="append", metavar="KEY=VALUE",
                         help="fsspec option for a remote DEST")
    weights.add_argument("--source-option", action="append", metavar="KEY=VALUE",
                         help="fsspec option for a remote SRC, e.g. anon=true for the public "
                              "buckets")
    weights.set_defaults(func=_cmd_convert_weights)

    verify = sub.add_parser("verify", help="re-check the checksums of every store under ROOT")
    verify.add_argument("root", help="a location name (demo, local, ...), a local folder or a "
                        "remote URL")
    verify.add_argument("--storage-option", action="append", metavar="KEY=VALUE")
    verify.set_defaults(func=_cmd_verify)

    index = sub.add_parser("index", help="rebuild the index of the stores under ROOT "
                                         "(nest-data-index.json)")
    index.add_argument("root", help="a location name, a local folder or a remote URL (s3://, "
                       "gs://; not http://)")
    index.add_argument("--storage-option", action="append", metavar="KEY=VALUE")
    index.set_defaults(func=_cmd_index)

    gen = sub.add_parser("generate", help="encode a folder or Zarr array of images into a new "
                                          "store (resumable; on dask)")
    gen.add_argument("images", help="folder of images, or a Zarr array/group of uint8 images")
    gen.add_argument("dest", help="root to write the store into")
    gen.add_argument("--imageset", required=True, help="name of the new image set")
    gen.add_argument("--subject", required=True, type=int)
    gen.add_argument("--roi", help="fMRI ROI (fwRF; the fsaverage model writes the whole "
                                   "surface)")
    gen.add_argument("--modality", default="fmri", choices=["fmri", "eeg"])
    gen.add_argument("--train-dataset", help="nsd_fsaverage: BERG's fsaverage surface model "
                                             "(default for fMRI: nsd, the fwRF model)")
    gen.add_argument("--chunk-vertices", type=int, default=4096,
                     help="surface stores: vertices per stored chunk")
    gen.add_argument("--location", help="location (name or URL) holding converted weights")
    gen.add_argument("--backbone", help="converted ViT-B/32 weights for EEG (default: the "
                                        "location's, or NEST_DATA_VIT_B_32)")
    gen.add_argument("--storage-option", action="append", metavar="KEY=VALUE")
    gen.add_argument("--chunk-images", type=int, help="images per stored chunk and per task")
    gen.add_argument("--batch-size", type=int, default=16)
    gen.add_argument("--device", default="auto")
    gen.add_argument("--workers", type=int, default=0,
                     help="run on a local dask cluster of this many worker processes")
    gen.add_argument("--scheduler", help="address of a running dask scheduler")
    gen.set_defaults(func=_cmd_generate)

    enc = sub.add_parser("encode", help="responses of an encoder to image files (computed "
                                        "now; needs converted weights at --location)")
    enc.add_argument("images", nargs="+", help="image files (any format Pillow reads)")
    enc.add_argument("--subject", required=True, type=int)
    enc.add_argument("--roi", help="fMRI ROI (fsaverage: a surface ROI, or none for the "
                                   "whole surface)")
    enc.add_argument("--modality", default="fmri", choices=["fmri", "eeg"])
    enc.add_argument("--train-dataset", help="nsd_fsaverage: BERG's fsaverage surface model")
    enc.add_argument("--location", help="location name or URL holding converted weights "
                                        "(e.g. demo)")
    enc.add_argument("--storage-option", action="append", metavar="KEY=VALUE")
    enc.add_argument("--out", help="write every response: FILE.nc (NetCDF) or FOLDER.zarr; "
                                   "without it, print each image's mean response. Written "
                                   "whole or not at all; an output nest-data wrote is "
                                   "replaced, anything else only with --overwrite")
    enc.add_argument("--overwrite", action="store_true",
                     help="replace a file or Zarr store at --out that nest-data did not write")
    enc.add_argument("--batch-size", type=int, default=16)
    enc.add_argument("--device", default="auto")
    enc.set_defaults(func=_cmd_encode)

    mirror = sub.add_parser("mirror", help="copy a subset of a location to a local folder")
    mirror.add_argument("dest", help="local folder to copy into")
    mirror.add_argument("--location", help="location name or URL to copy from")
    mirror.add_argument("--storage-option", action="append", metavar="KEY=VALUE")
    mirror.add_argument("--modality", nargs="+")
    mirror.add_argument("--imageset", nargs="+")
    mirror.add_argument("--subject", nargs="+", type=int)
    mirror.add_argument("--roi", nargs="+")
    mirror.add_argument("--workers", type=int, default=2)
    mirror.set_defaults(func=_cmd_mirror)

    cache = sub.add_parser("cache", help="the local chunk cache (NEST_DATA_CACHE_DIR)")
    cache.add_argument("action", choices=["info", "clear"])
    cache.set_defaults(func=_cmd_cache)

    cat = sub.add_parser("catalog", help="list or export catalog entries")
    cat.add_argument("--modality", nargs="+")
    cat.add_argument("--imageset", nargs="+")
    cat.add_argument("--subject", nargs="+", type=int)
    cat.add_argument("--roi", nargs="+")
    cat.add_argument("--catalog", nargs="*", default=[], help="extra catalog YAML files")
    cat.add_argument("--intake-esm", metavar="DIR", help="write an intake-esm collection")
    cat.add_argument("--location", help="list only the entries whose store exists at this "
                                        "location (name, folder or URL); also the root of "
                                        "the intake-esm paths")
    cat.add_argument("--storage-option", action="append", metavar="KEY=VALUE",
                     help="fsspec option for a remote --location")
    cat.add_argument("--max-rows", type=int, default=40)
    cat.add_argument("--all-columns", action="store_true",
                     help="every column (dims, voxel counts, store paths), wider than 80")
    cat.set_defaults(func=_cmd_catalog)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``nest-data`` command line; return the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except NestDataError as exc:
        print(f"nest-data: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
