"""Subprocess helpers for the reliability tests: run a real command, SIGKILL it mid-work, inspect leftovers."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Sequence

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def python_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)  # never let a test subprocess think it is a DDP rank
    return env


def run(cmd: Sequence[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=REPO_ROOT, env=python_env(), capture_output=True, text=True,
                          timeout=timeout)


def kill_when(cmd: Sequence[str], in_progress: Callable[[], bool], timeout: float = 120, poll_s: float = 0.005) -> str:
    """Start `cmd`, wait until `in_progress()` is true, then SIGKILL its whole process group; returns its output.

    Fails the test if the command finished (or died) before the kill point: a kill that lands after the work is
    done would test nothing.
    """
    proc = subprocess.Popen([str(c) for c in cmd], cwd=REPO_ROOT, env=python_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while not in_progress():
            if proc.poll() is not None:
                pytest.fail(f"{cmd} exited ({proc.returncode}) before the kill point:\n{proc.stdout.read()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"{cmd}: kill point not reached in {timeout} s")
            time.sleep(poll_s)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        output = proc.communicate(timeout=30)[0]
    assert proc.returncode == -signal.SIGKILL, f"expected death by SIGKILL, got {proc.returncode}:\n{output[-3000:]}"
    return output


def hidden_leftovers(*directories: Path) -> list[str]:
    """Temp files/dirs (dot-names) a writer left behind."""
    return sorted(p.name for d in directories if d.is_dir() for p in d.iterdir() if p.name.startswith("."))


def mtimes(paths) -> dict[str, int]:
    return {Path(p).name: Path(p).stat().st_mtime_ns for p in paths}


