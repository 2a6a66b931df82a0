"""The real tritonserver killed with SIGKILL mid-stream: the client reports it clearly, or retries with backoff
and finishes once the server is back; oversized requests are refused and the server stays healthy."""
from __future__ import annotations

import dataclasses
import threading

import numpy as np
import onnxruntime as ort
import pytest
import torch
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from export.formats import FORMATS
from export.parts import ParitySizes
from export.pipeline import export_checkpoint
from export.source import Target
from triton_repo import manifest as mf
from triton_repo.build import build_repository
from triton_repo.client import SlideClient
from triton_repo.connection import ClientError
from triton_repo.plan import BuildOptions, part_model_name
from triton_repo.server import TritonServer, free_port

ENTRY = "pathology_only"
MAX_BATCH = 32
CHUNK = 16


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    from zoo.checkpoint import checkpoint_payload, save_checkpoint
    from zoo.registry import get_entry

    entry = get_entry(ENTRY)
    torch.manual_seed(0)
    checkpoint = save_checkpoint(root / "best.pt",
                                 checkpoint_payload(entry, entry.config("tiny"), entry.build_model("tiny")))
    legacy = dataclasses.replace(FORMATS["onnx"], exporter="legacy")
    export = export_checkpoint(Target(checkpoint), legacy, root / "exports", sizes=ParitySizes((2,), (1, 8), (1,)),
                               progress=False).directory
    repo = root / "repo"
    build_repository([export], repo, BuildOptions(flavor="embedded", max_patch_batch=MAX_BATCH))
    ports = dict(grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    server = TritonServer(repo, log_path=root / "triton.log", **ports).start()
    yield {"repo": repo, "export": export, "ports": ports, "server": server, "root": root}
    server.stop()


def _patches(served, n, seed=0):
    spec_ = mf.load(served["export"]).part(mf.PATCH_ENCODER).input(0)
    return np.random.default_rng(seed).integers(0, 256, (n, *spec_.shape[1:]), dtype=np.uint8), spec_.name


def _stream_then_kill(client, served, patches, restart: bool):
    """Encode `patches` chunk by chunk; SIGKILL the server once a few chunks were sent (optionally restart it)."""
    sent = threading.Event()

    def batches():
        for i in range(0, len(patches), CHUNK):
            if i == 4 * CHUNK:
                sent.set()
            yield patches[i:i + CHUNK]

    outcome = {}

    def work():
        try:
            outcome["features"] = client.streamer.encode(batches())
        except Exception as exc:  # noqa: BLE001 - inspected by the test
            outcome["error"] = exc

    worker = threading.Thread(target=work)
    worker.start()
    assert sent.wait(60)
    served["server"]._process.kill()  # SIGKILL, no graceful shutdown
    served["server"].stop()  # reap it and its python-backend stubs
    if restart:
        served["server"] = TritonServer(served["repo"], log_path=served["root"] / "triton2.log",
                                        **served["ports"]).start()
    worker.join(120)
    assert not worker.is_alive()
    return outcome


def test_oversized_request_is_refused_and_server_stays_healthy(served):
    server = served["server"]
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        patches, name = _patches(served, MAX_BATCH + 1)
        item = grpcclient.InferInput(name, list(patches.shape), "UINT8")
        item.set_data_from_numpy(patches)
        with pytest.raises(InferenceServerException) as info:
            c.infer(part_model_name(ENTRY, "patch_encoder"), [item])
        assert str(info.value.status()) == "StatusCode.INVALID_ARGUMENT"
        assert str(MAX_BATCH) in info.value.message()
        assert c.is_server_ready()


def test_server_killed_mid_stream_is_a_clear_error_then_retries_finish_the_job(served):
    patches, name = _patches(served, 40 * CHUNK)
    session = ort.InferenceSession(str(served["export"] / "patch_encoder.onnx"), providers=["CPUExecutionProvider"])
    expected = session.run(None, {name: patches})[0]

    with SlideClient(served["server"].grpc_url, ENTRY, served["repo"], chunk_size=CHUNK, in_flight=1) as client:
        outcome = _stream_then_kill(client, served, patches, restart=True)
    error = outcome.get("error")
    assert isinstance(error, ClientError), outcome
    assert "UNAVAILABLE" in str(error) and f"{ENTRY}_patch_encoder" in str(error)

    with SlideClient(served["server"].grpc_url, ENTRY, served["repo"], chunk_size=CHUNK, in_flight=1,
                     retries=6, backoff_s=0.5) as client:
        outcome = _stream_then_kill(client, served, patches, restart=True)
    assert "error" not in outcome, outcome.get("error")
    np.testing.assert_allclose(outcome["features"], expected, atol=1e-5)
