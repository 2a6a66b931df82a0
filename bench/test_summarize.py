"""The README generator: tables per stage and targets computed as ratios from a pytest-benchmark JSON."""
from __future__ import annotations

import json

from bench import summarize


def _bench(group: str, engine: str, median: float, **extra) -> dict:
    return {"group": group, "name": f"test[{engine}]", "param": engine,
            "stats": {"median": median, "min": median, "rounds": 2}, "extra_info": {"engine": engine, **extra}}


def test_summary_computes_target_ratios(tmp_path):
    data = {"machine_info": {"device": "cpu (x86_64)", "torch_threads": 2, "versions": {"torch": "2.x"}},
            "datetime": "now", "benchmarks": [
                _bench("patch encoding", "pytorch_eager_fp32", 3.0, patches=300),
                _bench("patch encoding", "onnxruntime_cpu", 1.0, patches=300, patches_per_s=300.0),
                _bench("end to end", "onnxruntime_cpu", 2.0),
                _bench("end to end", "seed_baseline_png_eager_fp32", 8.0),
                _bench("serving vs in-process (end to end)", "onnxruntime_cpu", 10.0),
                _bench("serving vs in-process (end to end)", "triton_grpc", 13.0)]}
    source = tmp_path / "r.json"
    source.write_text(json.dumps(data))
    out = tmp_path / "README.md"
    assert summarize.main([str(source), "--output", str(out)]) == 0
    text = out.read_text()
    assert "| onnxruntime >= 1.5x PyTorch eager (patch encoding, CPU) | 3.00x | yes |" in text
    assert "| our end-to-end pipeline >= 5x faster than the seed-style baseline | 4.00x | NO |" in text
    assert "within 1.25x of in-process onnxruntime (comparison slide) | 1.30x | NO |" in text
    assert "| H100: encoder >= 30 % of bf16 peak | not measured |" in text
    assert "## patch encoding" in text and "| 300.0 |" in text


def test_seed_speedup_prefers_interleaved_rounds_over_medians():
    grouped = summarize.groups({"benchmarks": [
        _bench("end to end", "onnxruntime_cpu_int8", 1.0),
        _bench("end to end", "seed_baseline_png_eager_fp32", 8.0, speedup_onnxruntime_cpu_int8=5.5,
               speedup_onnxruntime_cpu_int8_rounds=[5.2, 5.5, 6.1])]})
    value, how = summarize.seed_speedup("onnxruntime_cpu_int8")(grouped)
    assert value == 5.5 and "5.20, 5.50, 6.10" in how
    value, how = summarize.seed_speedup("onnxruntime_cpu")(grouped)  # no rounds for that engine: no figure
    assert value is None and "median" in how


def test_summary_refuses_results_without_benchmarks(tmp_path, capsys):
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"benchmarks": []}))
    assert summarize.main([str(empty), "--output", str(tmp_path / "x.md")]) == 2
    assert "holds no benchmarks" in capsys.readouterr().err
    assert not (tmp_path / "x.md").exists()


def test_encoding_target_reads_interleaved_rounds_before_stage_medians():
    stage = [_bench("patch encoding", "pytorch_eager_fp32", 3.0), _bench("patch encoding", "onnxruntime_cpu", 2.5)]
    target = next(t for t in summarize.TARGETS if t.text.startswith("onnxruntime >= 1.5x PyTorch eager"))
    value, how = target.measure(summarize.groups({"benchmarks": stage}))
    assert value == 1.2 and "median pytorch_eager_fp32 / median onnxruntime_cpu" in how
    rounds = _bench(summarize.ENCODING_INTERLEAVED, "pytorch_eager_fp32", 3.0, speedup_onnxruntime_cpu=1.6,
                    speedup_onnxruntime_cpu_rounds=[1.5, 1.6, 1.7])
    value, how = target.measure(summarize.groups({"benchmarks": [*stage, rounds]}))
    assert value == 1.6 and "1.50, 1.60, 1.70" in how and not target.met(1.2) and target.met(1.6)


def test_reader_speedup_compares_the_pipelines_reader_with_openslide_in_one_thread():
    grouped = summarize.groups({"benchmarks": [
        _bench("patch reading", "caller's thread, OpenSlide only", 0.4, reader_threads=0, direct_jpeg=False),
        _bench("patch reading", "caller's thread", 0.2, reader_threads=0, direct_jpeg=True),
        _bench("patch reading", "4 reader threads", 0.125, reader_threads=4, direct_jpeg=True)]})
    assert summarize.reader_speedup(False)(grouped)[0] == 2.0
    value, how = summarize.reader_speedup(True)(grouped)
    assert value == 3.2 and "4 reader threads" in how and "OpenSlide only" in how
    assert summarize.reader_speedup(True)(summarize.groups({"benchmarks": [
        _bench("patch reading", "caller's thread, OpenSlide only", 0.4, reader_threads=0,
               direct_jpeg=False)]}))[0] is None


def test_gpu_targets_read_the_cuda_rows():
    """The rows a CUDA run writes (bench/test_gpu.py) fill the two H100 targets: fastest engine, fraction of peak."""
    grouped = summarize.groups({"benchmarks": [
        _bench("GPU: large slide end to end", "pytorch_bf16_channels_last", 1.8, patches=10_000),
        _bench("GPU: large slide end to end", "pytorch_compile_bf16", 1.2, patches=10_000),
        _bench("GPU: encoder FLOP/s", "pytorch_bf16_channels_last", 0.5, encoder_fraction_of_peak=0.25,
               peak_dtype="bf16", encoder_over_reader=0.8)]})
    targets = {t.text: t for t in summarize.TARGETS}
    slide = targets["H100: 10,000-patch slide <= 1.5 s end to end"]
    value, how = slide.measure(grouped)
    assert value == 1.2 and "pytorch_compile_bf16" in how and "10000 patches" in how and slide.met(value)
    peak = targets["H100: encoder >= 30 % of bf16 peak"]
    value, how = peak.measure(grouped)
    assert value == 25.0 and not peak.met(value) and "0.80x the reader" in how


def test_extraction_targets_read_the_recorded_ratios():
    """bench/test_extract_scaling.py records its ratios in extra_info; the targets read them, CLI and pre-started."""
    grouped = summarize.groups({"benchmarks": [
        _bench(summarize.EXTRACT_CLI, "1 process, 1 thread", 30.0, speedup_two_workers=1.45,
               speedup_two_workers_rounds=[1.4, 1.5], ray_over_single=1.3, ray_over_single_rounds=[1.2, 1.4],
               ray_cluster_startup_s=6.5, worker_peak_rss_mib=410.0),
        _bench(summarize.EXTRACT_PRESTARTED, "1 process, 1 thread", 20.0, speedup_two_workers=1.9,
               ray_over_single=1.1)]})
    targets = {t.text: t for t in summarize.TARGETS}
    cli = next(t for text, t in targets.items() if text.startswith("feature extraction: 2 worker processes"))
    value, how = cli.measure(grouped)
    assert value == 1.45 and not cli.met(value) and "1.40, 1.50" in how
    pre = targets["same, pre-started worker processes (no process start-up)"]
    assert pre.measure(grouped)[0] == 1.9 and pre.met(1.9)
    ray = targets["same, pre-started driver (no process start-up)"]
    assert ray.measure(grouped)[0] == 1.1 and ray.met(1.1)
    assert summarize.recorded(summarize.EXTRACT_CLI, "nope", "x")(grouped)[0] is None
    text = "\n".join(summarize.targets_section(grouped))
    assert "| 6.50 s | - |" in text and "| 410.00 MiB | - |" in text and "| 1.30x | NO |" in text
