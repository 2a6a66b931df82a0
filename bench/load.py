"""Load test (issue #8): N concurrent gRPC clients for a bounded time against the real server.

Every worker owns its SlideClient (its own gRPC channel) and predicts the same small slide bag in a loop; a
separate poller checks liveness/readiness over HTTP and gRPC throughout, and the server's process tree RSS is
sampled for the whole run.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from bench.memory import MIB, PeakRSS


@dataclass
class LoadReport:
    clients: int
    duration_s: float
    latencies_s: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    health_polls: int = 0
    health_failures: list[str] = field(default_factory=list)
    server_rss: PeakRSS | None = None

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_s, q)) if self.latencies_s else float("nan")

    def extra_info(self) -> dict:
        info = {"clients": self.clients, "duration_s": round(self.duration_s, 2), "requests": len(self.latencies_s),
                "failed_requests": len(self.failures),
                "requests_per_s": round(len(self.latencies_s) / self.duration_s, 2),
                "latency_p50_ms": round(1000 * self.percentile(50), 1),
                "latency_p99_ms": round(1000 * self.percentile(99), 1),
                "latency_max_ms": round(1000 * max(self.latencies_s, default=float("nan")), 1),
                "health_polls": self.health_polls, "health_failures": len(self.health_failures)}
        if self.server_rss is not None:
            info.update(self.server_rss.as_mib("server"))
            info["server_rss_growth_mib"] = round((self.server_rss.end - self.server_rss.start) / MIB, 1)
        return info


def run_load(make_worker: Callable[[], tuple[Callable[[], None], Callable[[], None]]], health: Callable[[], list[str]],
             clients: int, duration_s: float, server_pid: int | None, poll_interval_s: float = 0.25) -> LoadReport:
    """`make_worker()` -> (request, close) per client; `health()` -> list of problems (empty = truthful & healthy)."""
    report = LoadReport(clients, duration_s)
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)
    stop = threading.Event()

    def worker() -> None:
        try:
            request, close = make_worker()
        except Exception as exc:  # a client that cannot even connect is a failed request
            with lock:
                report.failures.append(f"connect: {type(exc).__name__}: {exc}")
            start.wait()
            return
        start.wait()
        try:
            while not stop.is_set():
                t0 = time.perf_counter()
                try:
                    request()
                except Exception as exc:
                    with lock:
                        report.failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                with lock:
                    report.latencies_s.append(time.perf_counter() - t0)
        finally:
            close()

    def poller() -> None:
        while not stop.wait(poll_interval_s):
            problems = health()
            with lock:
                report.health_polls += 1
                report.health_failures += problems

    threads = [threading.Thread(target=worker, name=f"load-client-{i}") for i in range(clients)]
    for t in threads:
        t.start()
    sampler = PeakRSS(server_pid, interval=0.2) if server_pid else None
    start.wait()
    t0 = time.perf_counter()
    watcher = threading.Thread(target=poller, name="health-poller")
    if sampler:
        sampler.__enter__()
    watcher.start()
    try:
        time.sleep(duration_s)
    finally:
        stop.set()
        for t in threads:
            t.join()
        watcher.join()
        if sampler:
            sampler.__exit__(None, None, None)
    report.duration_s = time.perf_counter() - t0
    report.server_rss = sampler
    return report
