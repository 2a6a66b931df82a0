"""Write bench/README.md from a pytest-benchmark JSON: conditions, one table per stage, and the targets as ratios
measured within that one run.

    uv run python -m bench.summarize bench/results/cpu.json [--output bench/README.md]
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from zoo.atomic import atomic_write_text
from zoo.cli_help import HelpFormatter

README = Path(__file__).with_name("README.md")

INTRO = """# Benchmarks

Latency and throughput per slide for every engine side by side, measured with pytest-benchmark on real
components (OpenSlide on synthetic SVS files, onnxruntime, the real `tritonserver`). This file is generated:
do not edit it, rerun

```bash
uv run pytest bench --benchmark-only --benchmark-json bench/results/cpu.json   # measure (<10 min on 2 CPU cores)
uv run python -m bench.summarize bench/results/cpu.json                        # regenerate this README
uv run pytest bench --benchmark-disable                                        # CI: every case once, small sizes
BENCH_LARGE=1 uv run pytest bench --benchmark-only -k memory                   # + a 40,000 x 40,000 px slide
bench/offline_gpu.sh wheels .whl && bench/offline_gpu.sh run .whl out          # the CUDA cases on a GPU host (below)
```

On a CUDA host (the `cuda` profile: ResNet-50 at 224 px, 256-px patches, a 10,000-patch slide, every core
reading) the bench adds PyTorch bf16/fp16 channels_last, `torch.compile` and onnxruntime CUDA (only when its CUDA
provider really starts: onnxruntime's silent fallback to the CPU is refused), the encoder's FLOP/s against the
bf16 matmul peak measured in the same run, and the 10,000-patch slide end to end. `bench/offline_gpu.sh` runs
those cases with the host's own PyTorch and no package index (the wheels it lacks travel with it). Without CUDA
they skip with the reason; CI runs them once on the CPU (`--benchmark-disable`), untimed, so they cannot rot.

Stages per slide: tiling (read + tissue detection + grid), patch reading (the data-loading ceiling: every patch
through OpenSlide in one thread, level-0 JPEG tiles decoded directly in one thread, and in the reader threads the
end-to-end pipeline uses), patch encoding, MIL + fusion, end to end from the SVS file to probabilities, the seed
tutorial's PNG-per-patch baseline, Triton vs in-process on the comparison slide, memory per slide size, and the
16-client load test.
The seed baseline is timed in rounds interleaved with our end-to-end engines (each baseline round right after
one run of each), and its speedup targets are medians of the per-round ratios, so load drift on a shared
machine hits both sides alike; eager fp32 patch encoding is timed the same way against onnxruntime fp32 and
int8 ("patch encoding, interleaved rounds"), and the onnxruntime >= 1.5x target reads those rounds. The
"ceiling" row divides the baseline by the int8 patch encoding alone: the speedup even a free tiling and reading
could not exceed on this machine.
Every engine's output is checked against the eager fp32 PyTorch reference before it is timed (`max_abs_diff_*`).
Figures are medians of a few rounds (one round = one whole slide). On the CPU the "matmul peak" is what
torch's fp32 matmul reaches here: a practical reference, not the hardware's peak (onnxruntime's convolutions can
exceed it); the encoder/reader rate says whether encoding (< 1) or slide reading (> 1) bounds a slide.
The model is `attention-path_clin` (pathology attention-MIL + clinical, attention fusion) built from the
profile's recipe with a fixed seed, untrained: speed does not depend on the weights.
"""


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    fmt: Callable[[Any], str] = str


def _num(digits: int) -> Callable[[Any], str]:
    return lambda v: f"{v:,.{digits}f}" if isinstance(v, (int, float)) else str(v)


COLUMNS = (
    Column("engine", "engine"), Column("slide_px", "slide px", _num(0)), Column("patches", "patches", _num(0)),
    Column("median_s", "median s", _num(3)), Column("min_s", "min s", _num(3)), Column("rounds", "rounds", _num(0)),
    Column("patches_per_s", "patches/s", _num(1)), Column("slides_per_s", "slides/s", _num(3)),
    Column("max_abs_diff_features", "max diff features", lambda v: f"{v:.1e}"),
    Column("max_abs_diff_probabilities", "max diff probs", lambda v: f"{v:.1e}"),
    Column("tiling_peak_rss_mib", "tiling peak RSS MiB", _num(0)),
    Column("generate_peak_rss_mib", "generation peak RSS MiB", _num(0)),
    Column("client_rss_peak_mib", "client peak RSS MiB", _num(0)),
    Column("client_rss_growth_mib", "client growth MiB", _num(0)),
    Column("server_rss_peak_mib", "server peak RSS MiB", _num(0)),
    Column("server_rss_growth_mib", "server growth MiB", _num(0)),
    Column("requests", "requests", _num(0)), Column("failed_requests", "failed", _num(0)),
    Column("requests_per_s", "req/s", _num(1)), Column("latency_p50_ms", "p50 ms", _num(0)),
    Column("latency_p99_ms", "p99 ms", _num(0)), Column("health_polls", "health polls", _num(0)),
    Column("health_failures", "health failures", _num(0)),
    Column("encoder_tflops", "encoder TFLOP/s", _num(3)), Column("matmul_peak_tflops", "matmul peak TFLOP/s", _num(3)),
    Column("peak_dtype", "peak dtype"),
    Column("encoder_fraction_of_peak", "of peak", lambda v: f"{100 * v:.0f} %"),
    Column("reader_tiles_per_s", "reader tiles/s", _num(0)),
    Column("encoder_over_reader", "encoder/reader rate", _num(2)),
    Column("speedup_two_workers", "2 workers x 1 thread vs 1 x 1", lambda v: f"{v:.2f}x"),
    Column("two_workers_over_default", "2 workers vs default threads", lambda v: f"{v:.2f}x"),
    Column("ray_over_single", "Ray s / single s", lambda v: f"{v:.2f}x"),
    Column("worker_peak_rss_mib", "peak RSS/worker MiB", _num(0)),
    Column("ray_cluster_startup_s", "Ray head start-up s", _num(1)),
)


def row(bench: dict) -> dict[str, Any]:
    stats = bench.get("stats") or {}
    return {"median_s": stats.get("median"), "min_s": stats.get("min"), "rounds": stats.get("rounds"),
            **{k: v for k, v in (bench.get("extra_info") or {}).items() if v is not None},
            "engine": (bench.get("extra_info") or {}).get("engine") or bench.get("param") or bench["name"]}


def table(rows: list[dict[str, Any]]) -> list[str]:
    cols = [c for c in COLUMNS if any(r.get(c.key) is not None for r in rows)]
    lines = ["| " + " | ".join(c.header for c in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join("" if r.get(c.key) is None else c.fmt(r[c.key]) for c in cols) + " |")
    return lines


def groups(data: dict) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for bench in data.get("benchmarks", []):
        out.setdefault(bench.get("group") or "other", []).append(row(bench))
    return out


def median_of(grouped: dict, group: str, engine: str) -> float | None:
    for r in grouped.get(group, []):
        if r["engine"] == engine and r.get("median_s"):
            return float(r["median_s"])
    return None


@dataclass(frozen=True)
class Target:
    text: str
    measure: Callable[[dict], tuple[float | None, str]]  # grouped -> (value, how it was computed)
    met: Callable[[float], bool] | None  # None: a figure reported for reference, not a target
    unit: str = "x"


def ratio(group: str, slow: str, fast: str,
          fast_group: str | None = None) -> Callable[[dict], tuple[float | None, str]]:
    """median of `slow` / median of `fast`, both in `group` unless `fast_group` names another stage."""
    def compute(grouped: dict) -> tuple[float | None, str]:
        a, b = median_of(grouped, group, slow), median_of(grouped, fast_group or group, fast)
        how = (f"median {slow} / median {fast} ({group})" if fast_group is None
               else f"median {slow} ({group}) / median {fast} ({fast_group})")
        return (a / b if a and b else None), how
    return compute


def interleaved_speedup(group: str, reference: str, engine: str,
                        medians_group: str | None = None) -> Callable[[dict], tuple[float | None, str]]:
    """`engine` vs the `reference` row of `group`, from interleaved rounds (bench.timing.interleaved); a file
    without them (older runs) falls back to the ratio of the two medians in `medians_group` (default `group`)."""
    fallback = ratio(medians_group or group, reference, engine)

    def compute(grouped: dict) -> tuple[float | None, str]:
        for r in grouped.get(group, []):
            if r["engine"] == reference and r.get(f"speedup_{engine}") is not None:
                rounds = ", ".join(f"{v:.2f}" for v in r.get(f"speedup_{engine}_rounds", []))
                return float(r[f"speedup_{engine}"]), (f"median over interleaved rounds of {reference} s / "
                                                       f"{engine} s ({group}; rounds {rounds})")
        return fallback(grouped)
    return compute


def seed_speedup(engine: str) -> Callable[[dict], tuple[float | None, str]]:
    return interleaved_speedup("end to end", "seed_baseline_png_eager_fp32", engine)


ENCODING_INTERLEAVED = "patch encoding, interleaved rounds"
# bench/test_extract_scaling.py: the same variants as whole CLI runs and in pre-started worker processes
EXTRACT_CLI = "feature extraction scaling (CLI processes, start-up included)"
EXTRACT_PRESTARTED = "feature extraction scaling (pre-started workers, no start-up)"


def recorded(group: str, key: str, what: str) -> Callable[[dict], tuple[float | None, str]]:
    """A figure a case recorded in its extra_info (`key`, with `key_rounds` when it is a median of per-round
    ratios), from the first row of `group` that has it."""
    def compute(grouped: dict) -> tuple[float | None, str]:
        for r in grouped.get(group, []):
            if r.get(key) is not None:
                rounds = r.get(f"{key}_rounds") or []
                detail = f"; rounds {', '.join(f'{v:.2f}' for v in rounds)}" if rounds else ""
                return float(r[key]), f"{what} ({group}{detail})"
        return None, f"no '{group}' rows in this file"
    return compute


def gpu_large_slide(grouped: dict) -> tuple[float | None, str]:
    rows = [r for r in grouped.get("GPU: large slide end to end", []) if r.get("median_s")]
    if not rows:
        return None, "no CUDA run in this file"
    best = min(rows, key=lambda r: r["median_s"])
    return float(best["median_s"]), f"fastest engine {best['engine']}, {best.get('patches')} patches"


def fraction_of_peak(group: str, engine: str | None = None) -> Callable[[dict], tuple[float | None, str]]:
    def measure(grouped: dict) -> tuple[float | None, str]:
        rows = [r for r in grouped.get(group, []) if r.get("encoder_fraction_of_peak") is not None
                and (engine is None or r["engine"] == engine)]
        if not rows:
            return None, f"no '{group}' rows in this file"
        r = rows[0]
        return (100 * float(r["encoder_fraction_of_peak"]),
                f"{r['engine']}: encoder FLOP/s / measured {r.get('peak_dtype', '?')} matmul FLOP/s; encoder runs at "
                f"{r.get('encoder_over_reader', float('nan')):.2f}x the reader's tiles/s")
    return measure


def reader_speedup(threaded: bool) -> Callable[[dict], tuple[float | None, str]]:
    """Patch reading by the pipeline's reader (direct JPEG decoding, in reader threads when `threaded`) against
    OpenSlide alone in the caller's thread (bench/test_stages.py::test_patch_reading)."""
    def compute(grouped: dict) -> tuple[float | None, str]:
        rows = [r for r in grouped.get("patch reading", []) if r.get("median_s")]
        base = next((r for r in rows if not r.get("reader_threads") and r.get("direct_jpeg") is False), None)
        ours = next((r for r in rows if r.get("direct_jpeg") and bool(r.get("reader_threads")) == threaded), None)
        if base is None or ours is None:
            return None, "no patch-reading rows for both readers in this file"
        return (float(base["median_s"]) / float(ours["median_s"]),
                f"median {base['engine']} / median {ours['engine']} (patch reading)")
    return compute


def load_failures(grouped: dict) -> tuple[float | None, str]:
    rows = grouped.get("load (16 gRPC clients)", [])
    if not rows:
        return None, "no load test in this file"
    r = rows[0]
    return float(r.get("failed_requests", 0)), (f"{r.get('requests')} requests, p50 {r.get('latency_p50_ms')} ms, "
                                                f"p99 {r.get('latency_p99_ms')} ms")


def tiling_peak(grouped: dict) -> tuple[float | None, str]:
    rows = grouped.get("memory: tiling per slide size", [])
    if not rows:
        return None, "no memory run in this file"
    worst = max(rows, key=lambda r: r.get("tiling_peak_rss_mib", 0))
    return float(worst["tiling_peak_rss_mib"]), f"largest tiling peak, slide {worst.get('slide_px')} px"


TARGETS = (
    Target("onnxruntime >= 1.5x PyTorch eager (patch encoding, CPU)",
           interleaved_speedup(ENCODING_INTERLEAVED, "pytorch_eager_fp32", "onnxruntime_cpu", "patch encoding"),
           lambda v: v >= 1.5),
    Target("onnxruntime vs PyTorch eager, patch encoding, ratio of the two stage medians (for reference)",
           ratio("patch encoding", "pytorch_eager_fp32", "onnxruntime_cpu"), None),
    Target("onnxruntime vs PyTorch eager, end to end (for reference)",
           ratio("end to end", "pytorch_eager_fp32", "onnxruntime_cpu"), lambda v: v >= 1.5),
    Target("Triton gRPC end to end within 1.25x of in-process onnxruntime (comparison slide)",
           ratio("serving vs in-process (end to end)", "triton_grpc", "onnxruntime_cpu"), lambda v: v <= 1.25),
    Target("Triton gRPC + system shared memory within 1.25x of in-process onnxruntime",
           ratio("serving vs in-process (end to end)", "triton_grpc_shm", "onnxruntime_cpu"), lambda v: v <= 1.25),
    Target("our end-to-end pipeline >= 5x faster than the seed-style baseline",
           seed_speedup("onnxruntime_cpu"), lambda v: v >= 5),
    Target("same, with the int8 patch encoder (python -m export.onnx --int8)",
           seed_speedup("onnxruntime_cpu_int8"), lambda v: v >= 5),
    Target("ceiling of that ratio here: seed baseline over int8 patch encoding alone (for reference)",
           ratio("end to end", "seed_baseline_png_eager_fp32", "onnxruntime_cpu_int8", "patch encoding"), None),
    Target("int8 onnxruntime vs PyTorch eager, patch encoding (for reference)",
           interleaved_speedup(ENCODING_INTERLEAVED, "pytorch_eager_fp32", "onnxruntime_cpu_int8", "patch encoding"),
           None),
    Target("int8 vs fp32 onnxruntime, patch encoding (for reference)",
           ratio("patch encoding", "onnxruntime_cpu", "onnxruntime_cpu_int8"), None),
    Target("patch reading: direct JPEG tiles vs OpenSlide, caller's thread (for reference)", reader_speedup(False),
           None),
    Target("patch reading: direct JPEG tiles in the reader threads vs OpenSlide, caller's thread (for reference)",
           reader_speedup(True), None),
    Target("feature extraction: 2 worker processes x 1 thread >= 1.6x 1 process x 1 thread (2 cores, CLI start-up "
           "included)", recorded(EXTRACT_CLI, "speedup_two_workers", "median over interleaved rounds of 1 process, "
                                 "1 thread s / 2 shards side by side s"), lambda v: v >= 1.6),
    Target("same, pre-started worker processes (no process start-up)",
           recorded(EXTRACT_PRESTARTED, "speedup_two_workers", "median over interleaved rounds of 1 process, "
                    "1 thread s / 2 shards side by side s"), lambda v: v >= 1.6),
    Target("feature extraction: 2 workers x 1 thread vs 1 process with default threads, CLI (for reference)",
           recorded(EXTRACT_CLI, "two_workers_over_default", "median over rounds of single default s / 2 shards s"),
           None),
    Target("same, pre-started (for reference)",
           recorded(EXTRACT_PRESTARTED, "two_workers_over_default", "median over rounds of single default s / 2 "
                    "shards s"), None),
    Target("feature extraction on Ray (2 CPU actors, running cluster) within 1.25x of the single process, CLI",
           recorded(EXTRACT_CLI, "ray_over_single", "median over rounds of Ray s / single default-threads s"),
           lambda v: v <= 1.25),
    Target("same, pre-started driver (no process start-up)",
           recorded(EXTRACT_PRESTARTED, "ray_over_single", "median over rounds of Ray s / single default-threads s"),
           lambda v: v <= 1.25),
    Target("Ray head start-up, `ray start --head` until its raylet is up (for reference)",
           recorded(EXTRACT_CLI, "ray_cluster_startup_s", "once per session, not in the ratios"), None, unit=" s"),
    Target("feature extraction: peak RSS of one worker process (for reference)",
           recorded(EXTRACT_CLI, "worker_peak_rss_mib", "largest psutil-sampled RSS of a CLI worker or Ray encoder "
                    "actor"), None, unit=" MiB"),
    Target("load test: zero failed requests", load_failures, lambda v: v == 0, unit=" failed"),
    Target("tiling peak RSS < 2 GiB", tiling_peak, lambda v: v < 2048, unit=" MiB"),
    Target("H100: 10,000-patch slide <= 1.5 s end to end", gpu_large_slide, lambda v: v <= 1.5, unit=" s"),
    Target("H100: encoder >= 30 % of bf16 peak", fraction_of_peak("GPU: encoder FLOP/s"), lambda v: v >= 30, unit=" %"),
    Target("CPU (for reference): onnxruntime encoder FLOP/s over torch's fp32 matmul FLOP/s",
           fraction_of_peak("CPU: encoder FLOP/s", "onnxruntime_cpu"), None, unit=" %"),
)


def targets_section(grouped: dict) -> list[str]:
    lines = ["| target | reached | met | how |", "|---|---|---|---|"]
    for t in TARGETS:
        value, how = t.measure(grouped)
        if value is None:
            lines.append(f"| {t.text} | not measured | - | {how} |")
        else:
            met = "-" if t.met is None else "yes" if t.met(value) else "NO"
            lines.append(f"| {t.text} | {value:.2f}{t.unit} | {met} | {how} |")
    return lines


def conditions(data: dict, source: str) -> list[str]:
    m = data.get("machine_info", {})
    versions = m.get("versions", {})
    commit = data.get("commit_info", {})
    return [
        f"Source: `{source}`, run {data.get('datetime', '?')}"
        + (f", commit `{str(commit.get('id', ''))[:10]}`{' (dirty)' if commit.get('dirty') else ''}" if commit else ""),
        "",
        f"- device: {m.get('device', '?')}; {m.get('cpu_count', '?')} CPU cores "
        f"({(m.get('cpu') or {}).get('brand_raw', m.get('processor', '?'))}); "
        f"torch threads {m.get('torch_threads', '?')}",
        f"- profile: {m.get('bench_profile', '?')}; load average at start {m.get('load_average_at_start', '?')} "
        "(other work on the machine inflates every figure alike; ratios within the run are what compare)",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
    ]


def render(data: dict, source: str) -> str:
    grouped = groups(data)
    lines = [INTRO, "## Conditions", "", *conditions(data, source), "", "## Targets (ratios within this run)", "",
             *targets_section(grouped), ""]
    for name, rows in grouped.items():
        lines += [f"## {name}", "", *table(rows), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.summarize", description=__doc__.split("\n\n")[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("results", help="pytest-benchmark JSON (--benchmark-json)")
    parser.add_argument("--output", default=str(README), help="Markdown file to write (default bench/README.md)")
    args = parser.parse_args(argv)
    path = Path(args.results)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        print(f"error: cannot read {path}: {exc}; produce it with "
              "`uv run pytest bench --benchmark-only --benchmark-json bench/results/cpu.json`", file=sys.stderr)
        return 2
    if not isinstance(data, dict) or not data.get("benchmarks"):
        print(f"error: {path} holds no benchmarks (was it written with --benchmark-disable?)", file=sys.stderr)
        return 2
    atomic_write_text(Path(args.output), render(data, str(path)))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
