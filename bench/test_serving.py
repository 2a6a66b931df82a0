"""Serving: Triton over gRPC (with and without system shared memory) vs in-process onnxruntime on the
comparison slide (1,000 patches on CPU), and the load test (issue #8): 16 concurrent gRPC clients."""
from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from bench.checks import assert_probabilities_close
from bench.conftest import ENTRY, TRITON_ENGINES, tolerance
from bench.load import run_load
from bench.memory import PeakRSS
from bench.pipeline import end_to_end
from bench.timing import measure
from triton_repo.inputs import array_bag
from triton_repo.plan import part_model_name

COMPARED = ["onnxruntime_cpu", *TRITON_ENGINES]


@pytest.mark.parametrize("engine_name", COMPARED)
def test_serving_vs_in_process(benchmark, engine_name, engines, compare_slide, tiling, clinical, workdir, profile,
                               request):
    """End to end from the SVS file on the large slide; client and server peak RSS recorded per engine."""
    engine = engines.get(engine_name)
    run = lambda: end_to_end(engine, compare_slide.path, workdir / f"tiles_cmp_{engine_name}", tiling, clinical)  # noqa: E731
    diff = assert_probabilities_close(run().probabilities, compare_slide.probabilities, tolerance(engine_name)[1],
                                      engine_name)
    server_pid = request.getfixturevalue("triton_server").pid if engine_name in TRITON_ENGINES else None
    with PeakRSS() as client_rss, PeakRSS(server_pid) if server_pid else PeakRSS() as server_rss:
        measure(benchmark, run, max(1, profile.rounds - 1), "serving vs in-process (end to end)",
                engine=engine_name, patches=len(compare_slide.coords), slides=1, slide_px=compare_slide.side_px,
                max_abs_diff_probabilities=diff)
    benchmark.extra_info.update(client_rss.as_mib("client"))
    if server_pid:
        benchmark.extra_info.update(server_rss.as_mib("server"))


def _health_checker(server, entry: str):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    models = (entry, f"{entry}_slide", part_model_name(entry, "patch_encoder"))

    def check() -> list[str]:
        problems = []
        try:
            if not server.is_ready():
                problems.append("HTTP /v2/health/ready is not 200 while the server serves requests")
            if not client.is_server_live():
                problems.append("gRPC ServerLive is false")
            if not client.is_server_ready():
                problems.append("gRPC ServerReady is false")
            problems += [f"model {m} reported not ready" for m in models if not client.is_model_ready(m)]
        except Exception as exc:  # noqa: BLE001 - an unreachable health endpoint is a health failure
            problems.append(f"health endpoint error: {type(exc).__name__}: {exc}")
        return problems

    return check, client


def test_load(benchmark, triton_server, bench_model, stage_slide, clinical, profile):
    """N concurrent gRPC clients for a bounded time: zero failed requests, truthful health, p50/p99, RSS growth."""
    from triton_repo.client import SlideClient

    coords, patches = stage_slide.coords[:profile.load_bag], stage_slide.patches[:profile.load_bag]
    reference = SlideClient(triton_server.grpc_url, manifest_or_repo=bench_model.exports["onnx"])
    expected = reference.predict(bags=[array_bag("load", coords, patches)], clinical=clinical).probabilities
    reference.close()

    def make_worker():
        client = SlideClient(triton_server.grpc_url, manifest_or_repo=bench_model.exports["onnx"],
                             chunk_size=profile.load_bag, in_flight=1)

        def request() -> None:
            got = client.predict(bags=[array_bag("load", coords, patches)], clinical=clinical).probabilities
            if np.max(np.abs(got - expected)) > 1e-5:
                raise AssertionError(f"load response differs from the unloaded one: {got} vs {expected}")

        return request, client.close

    check, health_client = _health_checker(triton_server, ENTRY)
    try:
        report = measure(benchmark, lambda: run_load(make_worker, check, profile.load_clients, profile.load_s,
                                                     triton_server.pid),
                         1, "load (16 gRPC clients)", engine="triton_grpc", patches_per_request=profile.load_bag)
    finally:
        health_client.close()
    benchmark.extra_info.update(report.extra_info())
    assert report.failures == [], f"{len(report.failures)} failed requests, first: {report.failures[:3]}"
    assert report.health_failures == [], f"health endpoints lied under load: {report.health_failures[:3]}"
    assert report.latencies_s, "no request completed during the load test"
    assert report.health_polls > 0
    assert triton_server.is_ready(), "server not ready after the load test"
