"""A real local Ray head for tests and benchmarks: `ray start --head` on 127.0.0.1, no dashboard, stopped after.

Used by tests/train/test_many_slides.py and bench/test_extract_scaling.py (bench may import tests' helpers;
nothing imports bench).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

# Keep Ray on loopback and away from the uv hook that would rebuild an environment for every worker.
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
           "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


@dataclass(frozen=True)
class RayHead:
    address: str
    pid: int
    startup_s: float  # until the raylet is up
    env: dict


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def local_ray_head(env: Mapping[str, str], tag: str, num_cpus: int = 2, timeout_s: float = 120) -> Iterator[RayHead]:
    """Start a head with `num_cpus` CPUs under `env` (+ RAY_ENV); yield it; stop its process group only."""
    env = {**env, **RAY_ENV}
    port = free_port()
    temp = Path("/tmp") / f"ray_{tag}{os.getpid()}"  # Ray's socket paths must stay short
    start = time.perf_counter()
    head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--node-ip-address",
                             "127.0.0.1", "--port", str(port), "--num-cpus", str(num_cpus), "--include-dashboard",
                             "false", "--temp-dir", str(temp), "--disable-usage-stats", "--block"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        deadline = time.time() + timeout_s
        while not any((temp / "session_latest").glob("logs/raylet.out")):
            assert head.poll() is None and time.time() < deadline, "ray start --head did not come up"
            time.sleep(0.2)
        yield RayHead(f"127.0.0.1:{port}", head.pid, time.perf_counter() - start, env)
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(5)
        shutil.rmtree(temp, ignore_errors=True)
