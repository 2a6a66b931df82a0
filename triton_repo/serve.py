"""Start Triton on a model repository and keep it running until Ctrl-C / SIGTERM.

    python -m triton_repo.serve [--model-repository model_repository] [--grpc-port 8001] [--http-port 8000]
                                [--metrics-port 8002] [--bind 127.0.0.1] [--startup-timeout 120]
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading

from triton_repo.server import TritonServer, TritonServerError
from zoo.cli_help import HelpFormatter


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m triton_repo.serve", description=__doc__.split("\n\n")[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--model-repository", default="model_repository",
                        help="model repository written by python -m triton_repo.build")
    parser.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (the client's --url)")
    parser.add_argument("--http-port", type=int, default=8000, help="HTTP/REST port")
    parser.add_argument("--metrics-port", type=int, default=8002, help="Prometheus metrics port")
    parser.add_argument("--bind", default="127.0.0.1",
                        help="listen address; the default is loopback only, 0.0.0.0 exposes the server to the network")
    parser.add_argument("--startup-timeout", type=float, default=120.0, help="seconds to wait for the server")
    parser.add_argument("--log-file", help="server log (default: a temp file, printed at start)")
    args = parser.parse_args(argv)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server = TritonServer(args.model_repository, args.grpc_port, args.http_port, args.metrics_port, args.bind,
                          args.startup_timeout, args.log_file)
    try:
        server.start()
    except TritonServerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"Triton ready (pid {server.pid}, log {server.log_path})")
    print(f"  gRPC     {server.grpc_url}\n  HTTP     http://{server.http_url}\n  metrics  {server.metrics_url}")
    for model in server.loaded_models():
        print(f"  model    {model['name']:<40} v{model.get('version', '?')}  {model.get('state', '?')}")
    sys.stdout.flush()
    while not stop.is_set():
        if not server.is_ready():
            print(f"error: tritonserver stopped unexpectedly; see {server.log_path}", file=sys.stderr)
            server.stop()
            return 1
        stop.wait(1.0)
    print("shutting down Triton ...")
    code = server.stop()
    print(f"Triton exited with code {code}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
