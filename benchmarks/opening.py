"""Opening the collection from a bucket: round trips per collection, not per entry.

Run: ``python benchmarks/opening.py [--quick] [--latency 0.03] [--repeats 3]``.  Builds the
demo collection (every fMRI subject x ROI, every EEG subject, the fsaverage surface: about
600 stores) in a temporary folder, serves it from the test suite's HTTP server (Range
support, ``latency`` seconds added to every request, like a bucket in the same region; in a
process of its own) and measures, with the number of requests each sends:

1. one entry, the first of a fresh process (``import nest_data`` not counted), and again;
2. the 184 nsd fMRI entries (8 subjects x 23 ROIs) with ``open_many``, against the same
   entries opened one after another with ``open`` (the baseline, same run);
3. every store of the location with ``open_collection`` (what it holds comes from its
   index: one request);
4. the same 184 entries from the local folder, against one ``open`` after another;
5. the cost of the checks every open makes (each label against its SHA-256, the metadata
   against the store's format and recorded checksums): the local ``open_many`` again with
   them switched off in this process, as the baseline.

Each is repeated (``--repeats``) and reported as the best and the range.  ``--quick`` opens
2 subjects instead of 8 and skips the whole location.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from run import environment, exit_on_sigterm

import nest_data
from nest_data import _open
from nest_data._storage import NestStore

RESULTS_DIR = Path(__file__).resolve().parent / "results"

#: Opens one entry in a fresh process: the time from after the imports to the array.
_COLD = """\
import json, sys, time
import nest_data
start = time.perf_counter()
nest_data.open(imageset="nsd", subject=1, roi="V1", location=sys.argv[1])
print(json.dumps({"seconds": time.perf_counter() - start}))
"""


#: Serves a folder with the test suite's HTTP server in a process of its own (in this one,
#: the server's threads would take the GIL from the client being measured).  Prints the URL;
#: then answers "count" with the requests since the last "reset".
_SERVE = """\
import sys
sys.path.insert(0, sys.argv[3])
from tests.servers import HTTPServer
with HTTPServer(latency=float(sys.argv[2])) as server:
    server.upload(sys.argv[1])
    print(server.url, flush=True)
    for line in sys.stdin:
        if line.strip() == "reset":
            server.reset()
            print("ok", flush=True)
        elif line.strip() == "count":
            print(len(server.requests), flush=True)
"""


class Server:
    """The HTTP server in a child process: ``url``, ``reset()``, ``requests()``."""

    def __init__(self, folder: Path, latency: float) -> None:
        repo = str(Path(__file__).resolve().parents[1])
        self.proc = subprocess.Popen([sys.executable, "-c", _SERVE, str(folder), str(latency),
                                      repo], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        self.url = self._line()

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line:
            raise RuntimeError("the HTTP server process exited")
        return line

    def _ask(self, what: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(what + "\n")
        self.proc.stdin.flush()
        return self._line()

    def reset(self) -> None:
        self._ask("reset")

    def requests(self) -> int:
        return int(self._ask("count"))

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=600)  # the server removes its copy of the collection


def timed(server: Server | None, fn: Callable[[], Any], repeats: int) -> dict[str, Any]:
    """Seconds of each of ``repeats`` runs of ``fn``, and the requests of the last one."""
    seconds = []
    requests = 0
    for _ in range(repeats):
        if server is not None:
            server.reset()
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
        if server is not None:
            requests = server.requests()
    return {"best": min(seconds), "worst": max(seconds), "requests": requests}


def cold_open(url: str, server: Server, repeats: int) -> dict[str, Any]:
    """One entry, the first open of a fresh process (each repeat a new process)."""
    seconds = []
    for _ in range(repeats):
        server.reset()
        out = subprocess.run([sys.executable, "-c", _COLD, url], capture_output=True,
                             text=True, check=True)
        seconds.append(json.loads(out.stdout)["seconds"])
    return {"best": min(seconds), "worst": max(seconds), "requests": server.requests()}


@contextlib.contextmanager
def unchecked() -> Iterator[None]:
    """Opens in this process skip the label and metadata checks (the baseline of their cost)."""
    check_metadata, check_object = _open.check_metadata, NestStore._check
    _open.check_metadata = lambda *args: None  # type: ignore[assignment]
    NestStore._check = lambda *args: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        _open.check_metadata, NestStore._check = check_metadata, check_object  # type: ignore[method-assign]


def without_checks(fn: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> Any:
        with unchecked():
            return fn()
    return run


def main() -> None:
    """Print a Markdown table and write it, with the raw figures, to benchmarks/results/."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--latency", type=float, default=0.03)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    exit_on_sigterm()
    cat = nest_data.catalog()
    subjects = [1, 2] if args.quick else list(range(1, 9))
    rois = sorted({e.roi for e in cat.search(model="fwrf", imageset="nsd") if e.roi})
    many = {"imageset": "nsd", "subject": subjects, "roi": rois}
    n_many = len(subjects) * len(rois)
    rows: list[tuple[str, int, dict[str, Any], dict[str, Any] | None]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(nest_data.build_demo(dest=str(Path(tmp) / "demo"), show_progress=False))
        n_stores = len(nest_data.catalog().search(location=str(root)))

        def one_by_one(location: str) -> None:
            for s in subjects:
                for r in rois:
                    nest_data.open(imageset="nsd", subject=s, roi=r, location=location)

        with Server(root, args.latency) as server:
            url = server.url
            rows.append(("one entry, first of a process", 1,
                         cold_open(url, server, args.repeats), None))
            nest_data.open(imageset="nsd", subject=1, roi="V1", location=url)  # session warm
            rows.append(("one entry, again", 1, timed(server, lambda: nest_data.open(
                imageset="nsd", subject=2, roi="V1", location=url), args.repeats), None))
            rows.append((f"{n_many} nsd fMRI entries, open_many", n_many,
                         timed(server, lambda: nest_data.open_many(location=url, **many),
                               args.repeats),
                         timed(server, lambda: one_by_one(url), 1)))
            if not args.quick:
                rows.append(("every store of the location, open_collection", n_stores,
                             timed(server, lambda: nest_data.open_collection(location=url),
                                   args.repeats), None))
        local = str(root)
        rows.append((f"{n_many} nsd fMRI entries, open_many, local folder", n_many,
                     timed(None, lambda: nest_data.open_many(location=local, **many),
                           args.repeats),
                     timed(None, lambda: one_by_one(local), args.repeats)))
        checked = timed(None, lambda: nest_data.open_many(location=local, **many),
                        args.repeats)
        rows.append((f"{n_many} nsd fMRI entries, open_many, local folder, with the checks "
                     "(baseline: without them)", n_many, checked,
                     timed(None, without_checks(lambda: nest_data.open_many(location=local,
                                                                            **many)),
                           args.repeats)))
    env = environment()
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"## Opening the collection, {args.latency * 1000:.0f} ms per request",
             "",
             f"{env['cpus']} cores, {env['platform']}, {when}; best of "
             f"{args.repeats} (range in brackets).",
             "",
             "| what | entries | requests | requests per entry | seconds | one `open` after "
             "another (s) | speed-up |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for what, n, got, baseline in rows:
        base = (f"{baseline['best']:.2f} | {baseline['best'] / got['best']:.1f}x"
                if baseline else "- | -")
        reqs = got["requests"] or "-"
        per = f"{got['requests'] / n:.1f}" if got["requests"] else "-"
        lines.append(f"| {what} | {n} | {reqs} | {per} | {got['best']:.2f} "
                     f"[{got['best']:.2f}-{got['worst']:.2f}] | {base} |")
    table = "\n".join(lines)
    print(table)
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    (RESULTS_DIR / f"opening_{stamp}.md").write_text(table + "\n")
    (RESULTS_DIR / f"opening_{stamp}.json").write_text(json.dumps(
        {"environment": env, "latency": args.latency,
         "rows": [{"what": w, "entries": n, "result": g, "baseline": b}
                  for w, n, g, b in rows]}, indent=2))


if __name__ == "__main__":
    main()
