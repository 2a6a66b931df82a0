"""Feature extraction (`python -m zoo.features extract`) of a fixed set of small slides, scaled over processes and
over Ray, as ratios taken in interleaved rounds of one run (bench.timing.interleaved).

The slides are bench slides (bench.slides, cached in the slide cache), two copies of each seed under two names so
that `--shard 0/2` and `--shard 1/2` get the same work; they are tiled once beforehand, so every case times
extraction only (read patches, encode, write). The encoder is ResNet-18 at 112 px with seeded random weights
(`--weights random`; speed does not depend on the weights): the cpu recipe's backbone up to entry version 1.1, kept
because it is heavier than 1.2's 64-px `cnn_ssl` and so closer to extraction with a real patch encoder.

Variants, every round one run of each (the reference, one process with one thread, under the benchmark clock):
  two_workers     two processes of one thread each, `--shard 0/2` and `--shard 1/2` side by side
  single_default  one process with its default torch threads (today's single-process run)
  ray             `--ray ADDRESS --workers 2` (2 CPU encoder actors) against a running local Ray head
Two cases: CLI processes (process start-up, ~8 s here, is part of a real run and of these figures) and pre-started
workers (bench.extract_workers: the library entry points called in processes started before the clock). The Ray
head's own start-up (`ray start --head`) is measured once and reported apart; peak RSS is sampled per worker
process (psutil) while each variant runs.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import psutil
import pytest

from bench.conftest import ROOT, benchmarks_disabled
from bench.extract_workers import BATCH_SIZE, ENCODER, INPUT_SIZE, REPLY
from bench.slides import bench_slide_path, side_for_patches, write_bench_slide
from bench.summarize import EXTRACT_CLI, EXTRACT_PRESTARTED
from bench.timing import interleaved
from tests.ray_head import RAY_ENV, RayHead, local_ray_head

PY = sys.executable
PATCH_SIZE = 128  # the cpu recipe's patch size
CLI_GROUP, PRESTARTED_GROUP = EXTRACT_CLI, EXTRACT_PRESTARTED
REFERENCE = "1 process, 1 thread"
MIB = 1024 ** 2
ROUNDS = 2  # interleaved rounds when measuring (each round runs every variant; CI runs each once)


@dataclass(frozen=True)
class Cohort:
    slides_dir: Path
    coords_dir: Path
    slides: int
    patches: int
    rows: dict[str, int]  # patches per slide id


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    return {**env, "PYTHONPATH": str(ROOT), **RAY_ENV}


ENV = _env()


@pytest.fixture(scope="module")
def extract_cohort(request, slide_cache, workdir) -> Cohort:
    """2 x `pairs` slides (each seed under two names, so both shards get the same work), tiled once."""
    from zoo.data.tile import find_slides, tile_slides

    pairs, patches = (1, 12) if benchmarks_disabled(request.config) else (3, 80)
    root = workdir / f"extract_scaling_{pairs}x{patches}"
    slides_dir, coords_dir = root / "wsi", root / "tiles"
    slides_dir.mkdir(parents=True, exist_ok=True)
    for i in range(2 * pairs):
        seed = 300 + i // 2
        side = side_for_patches(patches, PATCH_SIZE, seed)
        source = write_bench_slide(bench_slide_path(slide_cache, side, seed), side, seed=seed)
        target = slides_dir / f"E{i:02d}-0.svs"
        if not target.exists():
            shutil.copyfile(source, target)
    summary = tile_slides(find_slides(slides_dir), coords_dir, patch_size=PATCH_SIZE, workers=1, progress=False)
    assert not getattr(summary, "failed", None), summary
    rows = {}
    for h5 in sorted(coords_dir.glob("*.h5")):
        with h5py.File(h5, "r") as fh:
            rows[h5.stem] = int(fh["coords"].shape[0])
    assert len(rows) == 2 * pairs and all(rows.values()), rows
    return Cohort(slides_dir, coords_dir, len(rows), sum(rows.values()), rows)


# ------------------------------------------------------------------------------------------- peak RSS sampling
class PeakSampler:
    """Peak RSS per process while active: each root pid's tree (a CLI worker and anything it starts), and, under
    `ray_head`, every Ray worker process (`ray::...`) of the head's tree, sampled every `interval` s."""

    def __init__(self, roots: list[int], ray_head: int | None = None, interval: float = 0.1):
        self.roots, self.ray_head, self.interval = roots, ray_head, interval
        self.peaks: dict[int, int] = {}
        self.ray_peaks: dict[int, tuple[str, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="extract-rss")

    def _tree(self, pid: int) -> list[psutil.Process]:
        try:
            root = psutil.Process(pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def sample(self) -> None:
        for pid in self.roots:
            total = 0
            for proc in self._tree(pid):
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    pass
            self.peaks[pid] = max(self.peaks.get(pid, 0), total)
        if self.ray_head is not None:
            for proc in self._tree(self.ray_head)[1:]:
                try:
                    title = " ".join(proc.cmdline())
                    if title.startswith("ray::") and "IDLE" not in title:
                        name = title.split()[0]
                        rss = proc.memory_info().rss
                        self.ray_peaks[proc.pid] = (name, max(self.ray_peaks.get(proc.pid, ("", 0))[1], rss))
                except psutil.Error:
                    pass

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> "PeakSampler":
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def workers_mib(self) -> list[float]:
        return [round(v / MIB, 1) for v in self.peaks.values()]

    def ray_actors_mib(self) -> list[float]:
        """Peak RSS of the encoder actors' processes (Ray Data names them after the map's class)."""
        return [round(rss / MIB, 1) for name, rss in self.ray_peaks.values() if "EncoderActor" in name]


# ----------------------------------------------------------------------------------------------------- Ray head
@pytest.fixture(scope="module")
def ray_head(request):
    """A real `ray start --head` on 127.0.0.1 with 2 CPUs and no dashboard (None without ray[data], and in the CI
    rehearsal, where a Ray job's ~30 s of fixed cost would buy nothing: tests/train/test_many_slides.py runs the
    Ray path on a real cluster); its start-up (until the raylet is up) timed and reported apart; stopped after."""
    try:
        import ray.data  # noqa: F401
    except ImportError:
        yield None
        return
    if benchmarks_disabled(request.config):
        yield None
        return
    with local_ray_head(ENV, "b") as head:
        yield head


# ----------------------------------------------------------------------------------------------------- helpers
COUNTS = re.compile(r"(\d+) extracted, (\d+) already done, (\d+) being done by another process, (\d+) failed")


class Recorder:
    """Seconds and peak RSS per variant, round by round."""

    def __init__(self):
        self.seconds: dict[str, list[float]] = {}
        self.rss: dict[str, list[float]] = {}
        self.ray_actor_rss: list[float] = []

    def store(self, name: str, seconds: float, peaks: PeakSampler, ray: bool) -> None:
        """One run's figures; the reference's seconds are the benchmark's own rounds, a Ray run's sampled roots
        are its driver (the actors are sampled apart)."""
        if name != REFERENCE:
            self.seconds.setdefault(name, []).append(seconds)
        self.rss.setdefault("ray_driver" if ray else name, []).extend(peaks.workers_mib())
        if ray:
            self.ray_actor_rss.extend(peaks.ray_actors_mib())


def _check_outputs(out: Path, cohort: Cohort) -> None:
    directory = out / f"features_{ENCODER}"
    files = sorted(p for p in directory.glob("*.h5") if not p.name.startswith("."))
    assert [p.stem for p in files] == sorted(cohort.rows), files
    for p in files:
        with h5py.File(p, "r") as fh:
            assert fh["features"].shape[0] == cohort.rows[p.stem]


def _compare_features(a: Path, b: Path) -> float:
    diff = 0.0
    for x in sorted((a / f"features_{ENCODER}").glob("*.h5")):
        with h5py.File(x, "r") as fx, h5py.File(b / f"features_{ENCODER}" / x.name, "r") as fy:
            fa, fb = fx["features"][:], fy["features"][:]
            np.testing.assert_allclose(fa, fb, rtol=1e-4, atol=1e-4)
            diff = max(diff, float(np.abs(fa - fb).max()))
    return diff


def _key(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")


def _ratios(num: list[float], den: list[float]) -> tuple[float, list[float]]:
    rounds = [a / b for a, b in zip(num, den)]
    return round(statistics.median(rounds), 3), [round(r, 3) for r in rounds]


def _record(benchmark, rec: Recorder, cohort: Cohort, ray_head: RayHead | None) -> None:
    """Ratios per round from the recorded seconds (the reference's are the benchmark's own rounds), peak RSS."""
    info = benchmark.extra_info
    workers = [v for name, values in rec.rss.items() if name != "ray_driver" for v in values]
    info["worker_peak_rss_mib"] = max(workers + rec.ray_actor_rss)
    for name, values in rec.rss.items():
        if values:
            info[f"peak_rss_mib_{_key(name)}"] = max(values)
    if rec.ray_actor_rss:
        info["peak_rss_mib_ray_actor"] = max(rec.ray_actor_rss)
    if ray_head is not None:
        info["ray_cluster_startup_s"] = round(ray_head.startup_s, 2)
    stats = getattr(benchmark, "stats", None)
    if stats is None:
        return
    ref = list(stats.stats.data)
    seconds = {REFERENCE: ref, **rec.seconds}
    for name, values in seconds.items():
        info[f"median_s_{_key(name)}"] = round(statistics.median(values), 3)
    # two workers over the single process with its default threads (both timed in every round)
    info["two_workers_over_default"], info["two_workers_over_default_rounds"] = _ratios(
        seconds["single_default"], seconds["two_workers"])
    if "ray" in seconds:  # Ray's overhead: its seconds over the single process's (<= 1.25x is the target)
        info["ray_over_single"], info["ray_over_single_rounds"] = _ratios(seconds["ray"], seconds["single_default"])
        info["ray_over_1_thread"], info["ray_over_1_thread_rounds"] = _ratios(seconds["ray"], ref)
    info["patches_per_s_two_workers"] = round(cohort.patches / statistics.median(seconds["two_workers"]), 1)


def _info(cohort: Cohort, ray_head: RayHead | None) -> dict:
    return dict(engine=REFERENCE, encoder=f"{ENCODER} @ {INPUT_SIZE} px, random seeded weights", slides=cohort.slides,
                patches=cohort.patches, patch_size=PATCH_SIZE, batch_size=BATCH_SIZE, cpu_cores=os.cpu_count(),
                variants=["two_workers (--shard 0/2 + 1/2, --threads 1 each)", "single_default (default threads)",
                          *(["ray (--workers 2, CPU actors)"] if ray_head else [])])


# ------------------------------------------------------------------------------------------- CLI processes
def _cli(cohort: Cohort, out: Path, *extra) -> list[str]:
    return [PY, "-m", "zoo.features", "extract", "--encoder", ENCODER, "--weights", "random",
            "--slides", str(cohort.slides_dir), "--coords", str(cohort.coords_dir), "--output", str(out),
            "--input-size", str(INPUT_SIZE), "--batch-size", str(BATCH_SIZE), *map(str, extra)]


def test_extract_scaling_cli(benchmark, extract_cohort, ray_head, workdir, profile):
    """Whole CLI runs, process start-up included: what a job array or a Ray job costs end to end."""
    cohort, rec, runs = extract_cohort, Recorder(), count()
    outputs: dict[str, Path] = {}

    def variant(name: str, commands: Callable[[Path], list[list[str]]], ray: bool = False):
        def run():
            out = workdir / "extract_cli" / f"{_key(name)}_{next(runs)}"
            start = time.perf_counter()
            procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
                     for c in commands(out)]
            with PeakSampler([p.pid for p in procs], ray_head.pid if ray else None) as peaks:
                results = [p.communicate(timeout=900) for p in procs]
            seconds = time.perf_counter() - start
            extracted = 0
            for p, (stdout, stderr) in zip(procs, results):
                assert p.returncode == 0, stderr[-3000:]
                m = COUNTS.search(stdout)
                assert m and m.group(4) == "0", stdout + stderr[-2000:]
                extracted += int(m.group(1))
            assert extracted == cohort.slides
            _check_outputs(out, cohort)
            outputs[name] = out
            rec.store(name, seconds, peaks, ray)
        return run

    others = {"two_workers": variant("two_workers", lambda o: [_cli(cohort, o, "--threads", 1, "--shard", f"{i}/2")
                                                               for i in range(2)]),
              "single_default": variant("single_default", lambda o: [_cli(cohort, o)])}
    if ray_head is not None:
        others["ray"] = variant("ray", lambda o: [_cli(cohort, o, "--ray", ray_head.address, "--workers", 2)],
                                ray=True)
    reference = variant(REFERENCE, lambda o: [_cli(cohort, o, "--threads", 1)])
    interleaved(benchmark, reference, others, ROUNDS, CLI_GROUP, **_info(cohort, ray_head))
    benchmark.extra_info["max_abs_diff_features"] = max(
        _compare_features(outputs[REFERENCE], outputs[name]) for name in others)
    _record(benchmark, rec, cohort, ray_head)
    for key in [k for k in benchmark.extra_info if k.startswith("speedup_") and "rounds" not in k]:
        assert benchmark.extra_info[key] > 0


# ------------------------------------------------------------------------------------------ pre-started workers
class Worker:
    """One `python -m bench.extract_workers` process: started (imports, encoder built) before any clock."""

    def __init__(self, log: Path):
        self.log = log.open("w")
        self.proc = subprocess.Popen([PY, "-m", "bench.extract_workers"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True, env=ENV, cwd=ROOT)
        self.hello: dict | None = None

    def read(self, timeout: float = 900) -> dict:
        deadline = time.time() + timeout
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(REPLY):
                return json.loads(line[len(REPLY):])
            assert time.time() < deadline, "extract worker did not answer"
        raise AssertionError(f"extract worker exited ({self.proc.poll()}); see {self.log.name}")

    def ready(self) -> dict:
        if self.hello is None:
            self.hello = self.read(300)
        return self.hello

    def send(self, **job) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()


@pytest.fixture(scope="module")
def extract_workers(workdir):
    workers = [Worker(workdir / f"extract_worker_{i}.log") for i in range(2)]
    try:
        for w in workers:
            w.ready()
        yield workers
    finally:
        for w in workers:
            w.close()


def test_extract_scaling_prestarted(request, benchmark, extract_cohort, extract_workers, ray_head, workdir, profile):
    """The same variants through the library entry points in worker processes started before the clock: the
    scaling of extraction itself, without process start-up (Ray: the driver still connects and starts its actors
    each run, as a real job does)."""
    cohort, rec, runs = extract_cohort, Recorder(), count()
    a, b = extract_workers
    outputs: dict[str, Path] = {}
    job = dict(slides=str(cohort.slides_dir), coords=str(cohort.coords_dir))

    def variant(name: str, jobs: Callable[[Path], list[tuple[Worker, dict]]], ray: bool = False):
        def run():
            out = workdir / "extract_prestarted" / f"{_key(name)}_{next(runs)}"
            todo = jobs(out)
            start = time.perf_counter()
            with PeakSampler([w.proc.pid for w, _ in todo], ray_head.pid if ray else None) as peaks:
                for w, spec in todo:
                    w.send(**job, output=str(out), **spec)
                answers = [w.read() for w, _ in todo]
            seconds = time.perf_counter() - start
            assert all(not r["failed"] for r in answers), answers
            assert sum(r["extracted"] for r in answers) == cohort.slides, answers
            _check_outputs(out, cohort)
            outputs[name] = out
            rec.store(name, seconds, peaks, ray)
        return run

    others = {"two_workers": variant("two_workers", lambda o: [(a, {"threads": 1, "shard": [0, 2]}),
                                                               (b, {"threads": 1, "shard": [1, 2]})]),
              "single_default": variant("single_default", lambda o: [(a, {"threads": 0})])}
    if ray_head is not None:
        others["ray"] = variant("ray", lambda o: [(a, {"ray": ray_head.address, "workers": 2})], ray=True)
    reference = variant(REFERENCE, lambda o: [(a, {"threads": 1})])
    benchmark.extra_info["default_threads"] = a.ready()["default_threads"]
    if not benchmarks_disabled(request.config):
        for fn in (reference, *others.values()):  # warm-up: page cache, first encoder calls, Ray's first actors
            fn()
        rec = Recorder()
    interleaved(benchmark, reference, others, ROUNDS, PRESTARTED_GROUP, **_info(cohort, ray_head))
    benchmark.extra_info["max_abs_diff_features"] = max(
        _compare_features(outputs[REFERENCE], outputs[name]) for name in others)
    _record(benchmark, rec, cohort, ray_head)
