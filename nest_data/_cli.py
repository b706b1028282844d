"""The ``nest-data`` command line.

Every command takes the global options (``-v``, ``--no-progress``, ``--version``) before or
after its name.  Errors are printed in the command line's words: a library message's keyword
hints (``pass roi=``, ``train_dataset='nsd_fsaverage'``) name the command's flags (``--roi``,
``--train-dataset nsd_fsaverage``), see :func:`cli_message`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from nest_data._redact import redact_url
from nest_data.errors import ConversionError, InputError, NestDataError

__all__ = ["cli_message", "main"]

DESCRIPTION = """\
Open, convert, generate, encode and check the NEST family's in silico neural
responses (NED, NEST, BERG; fMRI and EEG) as labelled, chunked, checksummed
arrays."""

EPILOG = """\
first steps:
  nest-data demo                      build the demo, run the main job on it
  nest-data catalog --location demo   list what the demo holds
  nest-data info --imageset things --subject 1 --roi V1 --location demo
  nest-data encode cat.jpg dog.jpg --subject 1 --roi FFA-1 --location demo
  nest-data dream --subject 1 --roi FFA-1 --location demo --png-dir dreams

-v, --no-progress and --version may come before or after the command.
Data is read from --location (a location name, a folder or a URL), else from the
location named by NEST_DATA_LOCATION, else from the folder NEST_DATA_ROOT.
'nest-data COMMAND --help' describes a command and its arguments."""


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


# ------------------------------------------------------------------ parsers and messages


def _global_options(parser: argparse.ArgumentParser, default: Any) -> None:
    """Add the options every command takes, before or after its name.

    The top-level parser holds their defaults; a command's parser leaves them unset
    (``argparse.SUPPRESS``), so that an option given before the command is kept.
    """
    from nest_data import __version__

    parser.add_argument("-v", "--verbose", action="store_true", default=default,
                        help="log what nest-data does (INFO messages)")
    parser.add_argument("--no-progress", action="store_true", default=default,
                        help="hide progress bars (or set NEST_DATA_PROGRESS=0)")
    parser.add_argument("--version", action="version", version=f"nest-data {__version__}",
                        help="print nest-data's version and exit")


class _CommandParser(argparse.ArgumentParser):
    """The parser of one command: it takes the global options too, and records its flags.

    ``flags`` maps each option's keyword (``train_dataset``) to its flag
    (``--train-dataset``), for :func:`cli_message`.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(**kwargs)
        self.flags: dict[str, str] = {}
        _global_options(self, argparse.SUPPRESS)
        self.set_defaults(command_parser=self)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        flags = [o for o in action.option_strings if o.startswith("--")]
        if flags and action.dest not in ("help", "version"):
            self.flags[action.dest] = flags[0]
        return action


def _command(sub: Any, name: str, summary: str, epilog: str | None = None
             ) -> argparse.ArgumentParser:
    """A command ``name``: ``summary`` is its line in the list of commands and its help's
    first paragraph."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=summary, description=textwrap.fill(summary, width=80), epilog=epilog)
    return parser


#: A Python call written in a message (``nest_data.encode(images, roi='V1')``): kept as is.
_PYTHON_CALL = re.compile(r"[A-Za-z_][\w.]*\([^()]*\)")
#: A keyword hint (``roi=``, ``location='demo'``, ``train_dataset='a' / 'b'``).
_QUOTED = r"(?:'[^']*'|\"[^\"]*\")"
_KEYWORD = re.compile(rf"(?<![\w.\-?&/])([a-z][a-z0-9_]*)=((?:{_QUOTED}|[\w.:/+\-]+)"
                      rf"(?:\s*/\s*{_QUOTED})*)?")


def cli_message(message: str, flags: Mapping[str, str]) -> str:
    """A library message in the words of a command: its keyword hints as the command's flags.

    Only keywords that the command has a flag for are rewritten (a plural keyword takes the
    flag of its singular, ``storage_options=`` -> ``--storage-option``); Python calls quoted
    in the message are left whole, and so is ``name=False`` or ``name=None``.

    Parameters
    ----------
    message : str
        The error's message.
    flags : mapping
        Keyword -> flag, e.g. ``{"train_dataset": "--train-dataset"}``.

    Returns
    -------
    str

    Examples
    --------
    >>> flags = {"roi": "--roi", "train_dataset": "--train-dataset", "overwrite": "--overwrite"}
    >>> cli_message("no roi= given: pass roi=, or train_dataset='nsd_fsaverage'", flags)
    'no --roi given: pass --roi, or --train-dataset nsd_fsaverage'
    >>> cli_message("train_dataset='a' / 'b', or location='s3://lab/x'", {**flags,
    ...             "location": "--location"})
    '--train-dataset a / b, or --location s3://lab/x'
    >>> cli_message("give --overwrite (overwrite=True) to replace it", flags)
    'give --overwrite to replace it'
    >>> cli_message("call nest_data.encode(images, roi='V1'); model= is unknown here", flags)
    "call nest_data.encode(images, roi='V1'); model= is unknown here"
    """
    calls = [m.span() for m in _PYTHON_CALL.finditer(message)]

    def flag(match: re.Match[str]) -> str:
        name, value = match.group(1), match.group(2)
        option = flags.get(name) or (flags.get(name[:-1]) if name.endswith("s") else None)
        if option is None or value in ("False", "None") or any(
                start <= match.start() < end for start, end in calls):
            return match.group(0)
        if not value or value == "True":
            return option
        parts = re.findall(_QUOTED, value) if value[0] in "'\"" else [value]
        words = [part[1:-1] if part[:1] in "'\"" and " " not in part else part
                 for part in parts]
        return f"{option} {' / '.join(words)}"

    text = _KEYWORD.sub(flag, message)
    return re.sub(r"(--[\w-]+) \(\1\)", r"\1", text)  # "--overwrite (overwrite=True)"


# ------------------------------------------------------------------------- the commands


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
                      k=args.k, n_images=args.n_images, show_progress=_progress(args))
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


def _cmd_info(args: argparse.Namespace) -> int:
    import nest_data
    from nest_data._format import read_store_attrs
    from nest_data._storage import make_store

    options = _options(args.storage_option)
    keys = {"imageset": args.imageset, "subject": args.subject, "roi": args.roi,
            "modality": args.modality, "train_dataset": args.train_dataset}
    if args.store is not None:
        if any(v is not None for k, v in keys.items() if k != "roi") or args.location:
            raise InputError("give a STORE (folder or URL) or the entry's keys (--imageset, "
                             "--subject, --roi, ... and --location), not both")
        url, store_options = args.store, dict(options)
        da = nest_data.open_store(url, storage_options=options, roi=args.roi)
        where = redact_url(url)
    else:
        cat = nest_data.catalog()
        entry, root = cat.resolve_at(args.location, options, **keys)  # generate's too
        url, store_options = root.store(entry), dict(root.storage_options)
        da = nest_data.open(**keys, location=args.location, storage_options=options or None)
        where = f"{redact_url(url)} (location {redact_url(root.name or root.url)})"
    store = make_store(url, store_options)
    meta = read_store_attrs(store)
    print("\n".join(_summary(da, meta, where, _stored_bytes(store))))
    return 0


def _stored_bytes(store: Any) -> int | None:
    """The bytes a store's objects take where they are stored (None if not listable)."""
    from zarr.core.sync import sync

    try:
        return int(sync(store.getsize_prefix("")))
    except (NotImplementedError, OSError):
        return None


def _summary(da: Any, meta: Mapping[str, Any], where: str, stored: int | None) -> list[str]:
    """The lines ``nest-data info`` prints about one store."""
    keys = {**meta.get("keys", {}), **({"roi": da.attrs["roi"]} if da.attrs.get("roi") else {})}
    title = " ".join(f"{k}={v}" for k, v in keys.items() if v is not None) or str(da.name)
    shape = " x ".join(f"{dim} {size:,}" for dim, size in da.sizes.items())
    chunks = (" x ".join(str(c[0]) for c in da.chunks) if da.chunks else "one")
    size = f"{da.nbytes / 1e6:,.1f} MB of {da.dtype} values"
    if stored is not None:
        size += f", {stored / 1e6:,.1f} MB in its store"
    checksums = meta.get("checksums", {})
    lines = [title,
             f"  where:     {where}",
             f"  dims:      {shape} (chunks {chunks})",
             f"  size:      {size}",
             f"  units:     {da.attrs.get('units', 'not recorded')}",
             f"  checksum:  {checksums.get('responses', 'not recorded')} (responses)",
             f"             {len(checksums)} arrays and {len(meta.get('objects', {}))} objects "
             f"recorded, format {meta.get('format_version', '?')}; verify re-checks them",
             "  labels:"]
    dim_width = max(len(str(dim)) for dim in da.dims)
    width = max((len(str(name)) for name, c in da.coords.items() if c.ndim == 1), default=0)
    for dim in da.dims:
        names = [name for name, c in da.coords.items() if c.dims == (dim,)]
        for i, name in enumerate(names):
            line = (f"    {dim if i == 0 else '':<{dim_width}}  {name!s:<{width}}  "
                    f"{_first(da.coords[name].values)}")
            lines.append(line if len(line) <= 100 else line[:95] + " ...")
    several = [f"{name} ({' x '.join(map(str, c.dims))})" for name, c in da.coords.items()
               if c.ndim > 1]
    if several:
        lines += textwrap.wrap(", ".join(several), width=100, subsequent_indent=" " * 6,
                               initial_indent="    over several dims: ")
    return lines


def _first(values: Any, n: int = 3) -> str:
    """The first values of a label, as ``a, b, c, ...``."""
    shown = ", ".join(f"{v:.4g}" if isinstance(v, (float, np.floating)) else str(v)
                      for v in values[:n])
    return shown + (", ..." if len(values) > n else "")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nest-data", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _global_options(parser, False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_CommandParser,
                                title="commands (nest-data COMMAND --help for each)")

    demo = _command(sub, "demo", "build the synthetic demo collection and run the main job on "
                                 "it: open one ROI, rank its images, write figures")
    demo.add_argument("--out", default=".", help="folder for the figures (default: .)")
    demo.add_argument("--imageset", default="things",
                      help="image set of the main job (default: things)")
    demo.add_argument("--subject", type=int, default=1,
                      help="subject of the main job (default: 1)")
    demo.add_argument("--roi", default="V1", help="ROI of the main job (default: V1)")
    demo.add_argument("-k", type=int, default=5, help="number of top images to list")
    demo.add_argument("--rebuild", action="store_true", help="rebuild the demo collection")
    demo.add_argument("--n-images", type=int,
                      help="images per image set, 1 to 1000 (default: the built demo's, else "
                           "24); a demo built with another number is built again")
    demo.add_argument("--dest", help="write the demo collection to this folder or URL "
                                     "(s3://, gs://) instead of running the main job")
    demo.add_argument("--storage-option", action="append", metavar="KEY=VALUE",
                      help="fsspec option for a remote --dest (repeatable), e.g. anon=false")
    demo.set_defaults(func=_cmd_demo)

    convert = _command(sub, "convert", "convert original NEST-family files into nest-data "
                                       "stores (ned) or safetensors weights (weights)")
    convert_sub = convert.add_subparsers(dest="source", required=True, metavar="SOURCE",
                                         title="sources (nest-data convert SOURCE --help)")
    ned = _command(convert_sub, "ned", "NED pre-generated responses (HDF5 + .npy) -> one "
                                       "store per entry")
    ned.add_argument("src", help="folder holding pregenerated_insilico_neural_responses/")
    ned.add_argument("dest", help="root folder of the collection to write")
    ned.add_argument("--modality", nargs="+", help="convert only these modalities (fmri, eeg)")
    ned.add_argument("--subject", nargs="+", type=int, help="convert only these subjects")
    ned.add_argument("--roi", nargs="+", help="convert only these ROIs")
    ned.add_argument("--imageset", nargs="+", help="convert only these image sets")
    ned.add_argument("--workers", type=int, help="parallel processes (default: CPUs, max 4)")
    ned.add_argument("--overwrite", action="store_true", help="reconvert complete entries")
    ned.add_argument("--no-verify-existing", action="store_true",
                     help="skip complete entries without re-checking their checksums")
    ned.add_argument("--storage-option", action="append", metavar="KEY=VALUE",
                     help="fsspec option for a remote DEST (repeatable), e.g. anon=false")
    ned.set_defaults(func=_cmd_convert_ned)

    weights = _command(convert_sub, "weights",
                       "NEST/BERG encoder weights (fwRF .pt, EEG and fsaverage .npy, "
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
    weights.add_argument("--subject", nargs="+", type=int, help="convert only these subjects")
    weights.add_argument("--roi", nargs="+", help="convert only these ROIs")
    weights.add_argument("--storage-option", action="append", metavar="KEY=VALUE",
                         help="fsspec option for a remote DEST")
    weights.add_argument("--source-option", action="append", metavar="KEY=VALUE",
                         help="fsspec option for a remote SRC, e.g. anon=true for the public "
                              "buckets")
    weights.set_defaults(func=_cmd_convert_weights)

    verify = _command(sub, "verify", "re-check the checksums of every store under ROOT "
                                     "(exit status 1 if one does not match)")
    verify.add_argument("root", help="a location name (demo, local, ...), a local folder or a "
                        "remote URL")
    verify.add_argument("--storage-option", action="append", metavar="KEY=VALUE",
                        help="fsspec option for a remote ROOT (repeatable), e.g. anon=true")
    verify.set_defaults(func=_cmd_verify)

    index = _command(sub, "index", "rebuild the index of the stores under ROOT "
                                   "(nest-data-index.json)")
    index.add_argument("root", help="a location name, a local folder or a remote URL (s3://, "
                       "gs://; not http://)")
    index.add_argument("--storage-option", action="append", metavar="KEY=VALUE",
                       help="fsspec option for a remote ROOT (repeatable)")
    index.set_defaults(func=_cmd_index)

    gen = _command(sub, "generate", "encode a folder or Zarr array of images into a new "
                                    "store (resumable; on dask)")
    gen.add_argument("images", help="folder of images, or a Zarr array/group of uint8 images")
    gen.add_argument("dest", help="root to write the store into")
    gen.add_argument("--imageset", required=True, help="name of the new image set")
    gen.add_argument("--subject", required=True, type=int, help="the encoder's subject")
    gen.add_argument("--roi", help="fMRI ROI (fwRF; the fsaverage model writes the whole "
                                   "surface)")
    gen.add_argument("--modality", default="fmri", choices=["fmri", "eeg"],
                     help="the encoder's modality (default: fmri)")
    gen.add_argument("--train-dataset", help="nsd_fsaverage: BERG's fsaverage surface model "
                                             "(default for fMRI: nsd, the fwRF model)")
    gen.add_argument("--chunk-vertices", type=int, default=4096,
                     help="surface stores: vertices per stored chunk")
    gen.add_argument("--location", help="location (name or URL) holding converted weights")
    gen.add_argument("--backbone", help="converted ViT-B/32 weights for EEG (default: the "
                                        "location's, or NEST_DATA_VIT_B_32)")
    gen.add_argument("--storage-option", action="append", metavar="KEY=VALUE",
                     help="fsspec option for a remote DEST or --location (repeatable)")
    gen.add_argument("--chunk-images", type=int, help="images per stored chunk and per task")
    gen.add_argument("--batch-size", type=int, default=16,
                     help="images per forward pass (default: 16)")
    gen.add_argument("--device", default="auto", help="cpu, cuda, or auto (default)")
    gen.add_argument("--workers", type=int, default=0,
                     help="run on a local dask cluster of this many worker processes")
    gen.add_argument("--scheduler", help="address of a running dask scheduler")
    gen.set_defaults(func=_cmd_generate)

    enc = _command(sub, "encode", "responses of an encoder to image files (computed now; "
                                  "needs converted weights at --location)")
    enc.add_argument("images", nargs="+", help="image files (any format Pillow reads)")
    enc.add_argument("--subject", required=True, type=int, help="the encoder's subject")
    enc.add_argument("--roi", help="fMRI ROI (fsaverage: a surface ROI, or none for the "
                                   "whole surface)")
    enc.add_argument("--modality", default="fmri", choices=["fmri", "eeg"],
                     help="the encoder's modality (default: fmri)")
    enc.add_argument("--train-dataset", help="nsd_fsaverage: BERG's fsaverage surface model")
    enc.add_argument("--location", help="location name or URL holding converted weights "
                                        "(e.g. demo)")
    enc.add_argument("--storage-option", action="append", metavar="KEY=VALUE",
                     help="fsspec option for a remote --location (repeatable)")
    enc.add_argument("--out", help="write every response: FILE.nc (NetCDF) or FOLDER.zarr; "
                                   "without it, print each image's mean response. Written "
                                   "whole or not at all; an output nest-data wrote is "
                                   "replaced, anything else only with --overwrite")
    enc.add_argument("--overwrite", action="store_true",
                     help="replace a file or Zarr store at --out that nest-data did not write")
    enc.add_argument("--batch-size", type=int, default=16,
                     help="images per forward pass (default: 16)")
    enc.add_argument("--device", default="auto", help="cpu, cuda, or auto (default)")
    enc.set_defaults(func=_cmd_encode)

    mirror = _command(sub, "mirror", "copy a subset of a location to a local folder "
                                     "(checked, resumable)")
    mirror.add_argument("dest", help="local folder to copy into")
    mirror.add_argument("--location", help="location name or URL to copy from")
    mirror.add_argument("--storage-option", action="append", metavar="KEY=VALUE",
                        help="fsspec option for a remote --location (repeatable)")
    mirror.add_argument("--modality", nargs="+", help="copy only these modalities")
    mirror.add_argument("--imageset", nargs="+", help="copy only these image sets")
    mirror.add_argument("--subject", nargs="+", type=int, help="copy only these subjects")
    mirror.add_argument("--roi", nargs="+", help="copy only these ROIs")
    mirror.add_argument("--workers", type=int, default=2,
                        help="stores copied at a time (default: 2)")
    mirror.set_defaults(func=_cmd_mirror)

    cache = _command(sub, "cache", "the local cache of chunks read from remote stores "
                                   "(in NEST_DATA_CACHE_DIR)",
                     epilog="actions:\n"
                            "  info   print where the cache is, how many chunks and MB it\n"
                            "         holds, and its limit\n"
                            "  clear  delete every cached chunk and print the MB freed (the\n"
                            "         stores are not touched: chunks are read again from\n"
                            "         their location when needed)\n")
    cache.add_argument("action", choices=["info", "clear"],
                       help="info: where the cache is and what it holds; clear: empty it")
    cache.set_defaults(func=_cmd_cache)

    cat = _command(sub, "catalog", "list or export catalog entries")
    cat.add_argument("--modality", nargs="+", help="only these modalities")
    cat.add_argument("--imageset", nargs="+", help="only these image sets")
    cat.add_argument("--subject", nargs="+", type=int, help="only these subjects")
    cat.add_argument("--roi", nargs="+", help="only these ROIs")
    cat.add_argument("--catalog", nargs="*", default=[], help="extra catalog YAML files")
    cat.add_argument("--intake-esm", metavar="DIR", help="write an intake-esm collection")
    cat.add_argument("--location", help="list only the entries whose store exists at this "
                                        "location (name, folder or URL); also the root of "
                                        "the intake-esm paths")
    cat.add_argument("--storage-option", action="append", metavar="KEY=VALUE",
                     help="fsspec option for a remote --location")
    cat.add_argument("--max-rows", type=int, default=40,
                     help="rows printed at most (default: 40)")
    cat.add_argument("--all-columns", action="store_true",
                     help="every column (dims, voxel counts, store paths), wider than 80")
    cat.set_defaults(func=_cmd_catalog)

    _info_parser(sub)
    from nest_data._cli_gradients import add_dream, add_saliency

    add_dream(sub)
    add_saliency(sub)
    return parser


def _entry_keys(parser: argparse.ArgumentParser, roi_help: str) -> None:
    """The keys of one entry or encoder: --subject, --roi, --modality, --train-dataset."""
    parser.add_argument("--subject", required=True, type=int, help="the subject")
    parser.add_argument("--roi", help=roi_help)
    parser.add_argument("--modality", choices=["fmri", "eeg"], default="fmri",
                        help="fmri (default) or eeg")
    parser.add_argument("--train-dataset", help="nsd_fsaverage: BERG's fsaverage surface "
                                                "model (default for fMRI: nsd, the fwRF model)")


def _location_options(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--location", help=f"location name (demo, local, ...), folder or URL "
                                           f"holding {what} (default: NEST_DATA_LOCATION, "
                                           "then NEST_DATA_ROOT)")
    parser.add_argument("--storage-option", action="append", metavar="KEY=VALUE",
                        help="fsspec option for a remote location (repeatable), e.g. "
                             "anon=true")


def _info_parser(sub: Any) -> None:
    info = _command(sub, "info", "print one entry's summary: where its store is, its dims, "
                                 "labels, size and checksums",
                    epilog="examples:\n"
                           "  nest-data info --imageset things --subject 1 --roi V1 "
                           "--location demo\n"
                           "  nest-data info generated/my_stimuli.zarr --roi FFA-1\n")
    info.add_argument("store", nargs="?", help="a store's folder or URL (e.g. one that "
                      "generate wrote); without it, the entry is found by its keys")
    info.add_argument("--imageset", help="the entry's image set (nsd, imagenet_val, things, "
                                         "or one you generated)")
    info.add_argument("--subject", type=int, help="the entry's subject")
    info.add_argument("--roi", help="fMRI ROI (for a surface store, its vertices only)")
    info.add_argument("--modality", choices=["fmri", "eeg"], help="fmri or eeg")
    info.add_argument("--train-dataset", help="nsd_fsaverage: the fsaverage surface model")
    _location_options(info, "the store")
    info.set_defaults(func=_cmd_info)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``nest-data`` command line; return the exit status.

    Errors of nest-data (and a missing optional dependency) are printed as one line in the
    command line's words (see :func:`cli_message`), with exit status 2.
    """
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except NestDataError as exc:
        print(f"nest-data: error: {cli_message(str(exc), args.command_parser.flags)}",
              file=sys.stderr)
        return 2
    except ImportError as exc:
        if "pip install" not in str(exc):  # not an optional extra's own message
            raise
        print(f"nest-data: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nest-data: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of stdout left (``nest-data info ... | head``)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 141


if __name__ == "__main__":
    sys.exit(main())
