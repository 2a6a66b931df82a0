"""Peak resident memory: a psutil sampler thread over a process tree, and a fresh interpreter for clean peaks."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import psutil

MIB = 1024 ** 2


def tree_rss(pid: int) -> int:
    """RSS of `pid` plus its children (Triton's python-backend stubs are children of tritonserver), bytes."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


class PeakRSS:
    """Samples a process tree's RSS every `interval` s while active: `with PeakRSS(pid) as m: ...; m.peak`."""

    def __init__(self, pid: int | None = None, interval: float = 0.05):
        self.pid = os.getpid() if pid is None else pid
        self.interval = interval
        self.start = self.peak = self.end = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, tree_rss(self.pid))

    def __enter__(self) -> "PeakRSS":
        self.start = self.peak = tree_rss(self.pid)
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.end = tree_rss(self.pid)
        self.peak = max(self.peak, self.end)

    def as_mib(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}_rss_start_mib": round(self.start / MIB, 1),
                f"{prefix}_rss_peak_mib": round(self.peak / MIB, 1),
                f"{prefix}_rss_end_mib": round(self.end / MIB, 1)}


_CHILD = """
import json, sys, time
sys.path.insert(0, {root!r})
args = json.loads(sys.argv[1])
t0 = time.perf_counter()
result = {{"ok": True, "message": "", "patches": 0}}
if args["action"] == "generate":
    from bench.slides import write_bench_slide
    write_bench_slide(args["slide"], args["size"], workers=1)  # one process: its peak RSS is the generation's
else:
    from zoo.data import tile
    r = tile.tile_slide(args["slide"], args["out"], args["patch_size"], overwrite=True)
    result = {{"ok": r.ok, "message": r.message, "patches": r.num_patches}}
# VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over fork + exec from the (large) parent.
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
result.update(seconds=time.perf_counter() - t0, peak_rss=int(hwm.split()[1]) * 1024)
print(json.dumps(result))
"""


def run_in_subprocess(action: str, slide: Path, size: int = 0, out: Path | None = None, patch_size: int = 0,
                      timeout: float = 3600) -> dict:
    """`generate` a size x size slide or `tile` it in a fresh interpreter; returns seconds and its peak RSS."""
    code = _CHILD.format(root=str(Path(__file__).resolve().parents[1]))
    args = json.dumps({"action": action, "slide": str(slide), "size": size, "out": str(out), "patch_size": patch_size})
    done = subprocess.run([sys.executable, "-c", code, args], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{action} of {slide} failed (exit {done.returncode}): {done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if not result["ok"]:
        raise RuntimeError(f"{action} of {slide} failed: {result['message']}")
    return result
