"""A slide viewer in the browser: the cohort's patients, predictions and attention.

    python -m zoo.viewer --data-dir data/breast_cancer --checkpoint outputs/attention/best.pt [--port 8765]
    python -m zoo.viewer --data-dir data/breast_cancer --triton 127.0.0.1:8001 --model attention [--repository R]

Starts a read-only web server (FastAPI on uvicorn) bound to 127.0.0.1 unless --bind says otherwise, and prints its
URL. The page needs OpenSeadragon: `npm ci --prefix zoo/viewer/frontend` once. Predictions and attention are
computed once per patient (in a background thread from the start, and on demand for the patient you open) and
cached in memory and under --cache-dir, keyed by the checkpoint's sha256 (or the served manifest's) and patient.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from zoo.cli_help import HelpFormatter


def default_cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "breast-fusion-zoo" / "viewer"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m zoo.viewer", description=__doc__.split("\n\n")[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--data-dir", default="data/breast_cancer", help="cohort directory")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="outputs/<entry>/best.pt: run the model in this process")
    source.add_argument("--triton", metavar="HOST:PORT", help="predict through a running Triton server (gRPC)")
    parser.add_argument("--model", help="with --triton: the entry (default: the server's only one)")
    parser.add_argument("--repository", default=None,
                        help="with --triton: model repository or export dir to read the manifest from (default: "
                             "the server's own copy)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--bind", default="127.0.0.1",
                        help="address to listen on; anything but loopback exposes the cohort to the network")
    parser.add_argument("--cache-dir", default=None, help=f"prediction cache (default: {default_cache_dir()})")
    parser.add_argument("--no-cache", action="store_true", help="keep predictions in memory only")
    parser.add_argument("--device", default="cpu", help="with --checkpoint: torch device")
    parser.add_argument("--version", default=None,
                        help="with --checkpoint: its entry version when it is not the registry's (e.g. 1.4)")
    parser.add_argument("--no-warm", action="store_true",
                        help="compute predictions only for the patients opened (the list shows them as pending)")
    parser.add_argument("--log-level", default="warning", help="uvicorn log level")
    return parser.parse_args(argv)


def build_backend(args: argparse.Namespace, cohort):
    if args.checkpoint:
        from zoo.viewer.inference import CheckpointBackend

        return CheckpointBackend(args.checkpoint, cohort, device=args.device, version=args.version)
    if args.version is not None:
        raise ValueError("--version applies to --checkpoint; a served model's version is its manifest's")
    from zoo.viewer.triton_backend import TritonBackend

    return TritonBackend(args.triton, args.model, args.repository, cohort)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from zoo.checkpoint import CheckpointError
    from zoo.viewer.app import OSD_MISSING, create_app, openseadragon_installed
    from zoo.viewer.cohort import Cohort

    try:
        cohort = Cohort(args.data_dir)
        backend = build_backend(args, cohort)
    except (CheckpointError, FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not openseadragon_installed():
        print(f"warning: {OSD_MISSING}", file=sys.stderr)
    if args.bind not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {args.bind}: anyone who can reach it sees the cohort", file=sys.stderr)
    cache = None if args.no_cache else (args.cache_dir or default_cache_dir())
    app = create_app(cohort, backend, cache_dir=cache, warm=not args.no_warm)
    import uvicorn

    config = uvicorn.Config(app, host=args.bind, port=args.port, log_level=args.log_level, access_log=False)
    server = uvicorn.Server(config)
    host = f"[{args.bind}]" if ":" in args.bind else args.bind
    print(f"zoo.viewer: {backend.entry} ({backend.kind}) over {len(cohort.patients)} patients of {cohort.data_dir}",
          flush=True)
    print(f"serving on http://{host}:{args.port}/  (Ctrl+C stops)", flush=True)
    server.run()
    return 0
