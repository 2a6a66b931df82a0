"""Against the real tritonserver serving real exports: equal to in-process PyTorch, chunked streaming, errors."""
from __future__ import annotations

import ipaddress
import tracemalloc

import numpy as np
import psutil
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.triton.conftest import ENTRY, MAX_PATCH_BATCH, SECOND_ENTRY, TOL
from triton_repo import inputs as inp
from triton_repo import manifest as mf
from triton_repo.client import SlideClient
from triton_repo.client import main as client_main
from triton_repo.connection import ClientError
from triton_repo.plan import ensemble_io, part_model_name
from triton_repo.server import TritonServer, TritonServerError, free_port


@pytest.fixture(scope="module")
def reference(references):
    return references[ENTRY]


@pytest.fixture(scope="module")
def patient(manifest):
    rng = np.random.default_rng(7)
    patches_spec = manifest.part(mf.PATCH_ENCODER).input(0)
    n = 700  # several chunks, more than the encoder's max batch
    patches = rng.integers(0, 256, (n, *patches_spec.shape[1:]), dtype=np.uint8)
    coords = rng.integers(0, 50_000, (n, 2))
    mri = rng.normal(size=manifest.part(mf.MRI_ENCODER).input(0).shape[1:]).astype(np.float32)
    clinical = rng.normal(size=manifest.part(mf.CLINICAL_ENCODER).input(0).shape[1:]).astype(np.float32)
    return {"patches": patches, "coords": coords, "mri": mri, "clinical": clinical}


@pytest.fixture(scope="module")
def client(server, repository):
    with SlideClient(server.grpc_url, ENTRY, repository, chunk_size=96, in_flight=3) as c:
        yield c


def _infer(url, model, arrays: dict[str, np.ndarray], outputs: list[str], timeout_s: float = 30.0):
    with grpcclient.InferenceServerClient(url) as c:
        items = []
        for name, a in arrays.items():
            i = grpcclient.InferInput(name, list(a.shape), grpcclient.np_to_triton_dtype(a.dtype))
            i.set_data_from_numpy(a)
            items.append(i)
        result = c.infer(model, items, outputs=[grpcclient.InferRequestedOutput(o) for o in outputs],
                         client_timeout=timeout_s)
        return [result.as_numpy(o) for o in outputs]


def _assert_equal_to_reference(probabilities, fusion_attention, patch_attention, ref):
    np.testing.assert_allclose(probabilities, ref.probabilities, atol=TOL)
    np.testing.assert_allclose(fusion_attention, ref.fusion_attention, atol=TOL)
    if ref.patch_attention is None:
        assert patch_attention is None
    else:
        np.testing.assert_allclose(patch_attention, ref.patch_attention, atol=TOL)


def test_full_ensemble_equals_pytorch(server, manifest, reference, patient):
    io = ensemble_io(manifest, from_features=False)
    bag = patient["patches"][:MAX_PATCH_BATCH]  # the full ensemble takes a bag up to the encoder's max batch
    arrays = {io.modality_inputs["pathology"].name: bag, io.modality_inputs["mri"].name: patient["mri"][None],
              io.modality_inputs["clinical"].name: patient["clinical"][None], io.presence.name: np.ones((1, 3), bool)}
    probs, fusion, attention = _infer(server.grpc_url, ENTRY, arrays, [io.probabilities.name,
                                                                      io.fusion_attention.name,
                                                                      io.patch_attention.name])
    _assert_equal_to_reference(probs[0], fusion[0], attention, reference.predict(bag, patient["mri"],
                                                                                 patient["clinical"]))
    assert probs.shape == (1, len(manifest.class_names)) and attention.shape == (len(bag),)


@pytest.fixture(scope="module")
def whole_patient_reference(reference, patient):
    return reference.predict(patient["patches"], patient["mri"], patient["clinical"])


@pytest.mark.parametrize("shared_memory", [False, True])
def test_chunked_slide_path_equals_pytorch(server, repository, whole_patient_reference, patient, shared_memory):
    bags = [inp.array_bag("P1-0", patient["coords"][:400], patient["patches"][:400], 50),
            inp.array_bag("P1-1", patient["coords"][400:], patient["patches"][400:], 300)]
    with SlideClient(server.grpc_url, ENTRY, repository, chunk_size=64, in_flight=3,
                     shared_memory=shared_memory) as c:
        pred = c.predict(bags=bags, mri=patient["mri"], clinical=patient["clinical"])
    ref = whole_patient_reference
    _assert_equal_to_reference(pred.probabilities, pred.fusion_attention, pred.patch_attention, ref)
    assert pred.slide_ids == ("P1-0", "P1-1")
    np.testing.assert_array_equal(pred.coords[:, 0], np.repeat([0, 1], [400, 300]))
    np.testing.assert_array_equal(pred.coords[:, 1:], patient["coords"])
    top = pred.top_patches(3)
    assert top[0]["attention"] == pytest.approx(float(ref.patch_attention.max()), abs=TOL)


@pytest.mark.parametrize("missing", ["pathology", "mri", "clinical"])
def test_each_missing_modality_equals_pytorch(client, reference, patient, missing):
    given = {"pathology": patient["patches"][:200], "mri": patient["mri"], "clinical": patient["clinical"]}
    given[missing] = None
    bags = [] if given["pathology"] is None else [inp.array_bag("s", patient["coords"][:200], given["pathology"])]
    pred = client.predict(bags=bags, mri=given["mri"], clinical=given["clinical"])
    ref = reference.predict(given["pathology"], given["mri"], given["clinical"])
    _assert_equal_to_reference(pred.probabilities, pred.fusion_attention, pred.patch_attention, ref)
    assert not pred.presence[pred.modalities.index(missing)]
    assert pred.fusion_attention[pred.modalities.index(missing)] == pytest.approx(0.0, abs=1e-6)


def test_second_entry_served_side_by_side(server, repository, references, patient):
    with SlideClient(server.grpc_url, SECOND_ENTRY, repository) as c:
        pred = c.predict(bags=[inp.array_bag("s", patient["coords"][:50], patient["patches"][:50])],
                         clinical=patient["clinical"])
        with pytest.raises(ClientError, match="has no mri branch"):
            c.predict(mri=patient["mri"])
    ref = references[SECOND_ENTRY].predict(patient["patches"][:50], clinical=patient["clinical"])
    _assert_equal_to_reference(pred.probabilities, pred.fusion_attention, pred.patch_attention, ref)
    assert pred.modalities == ("pathology", "clinical")


def _streaming_peak(client, shape, n, batch=500):
    def batches():  # patches are produced lazily, like reading them from a slide
        rng = np.random.default_rng(0)
        for start in range(0, n, batch):
            yield rng.integers(0, 256, (min(batch, n - start), *shape), dtype=np.uint8)
    coords = np.stack(np.meshgrid(np.arange(200), np.arange(200)), -1).reshape(-1, 2)[:n] * 256
    tracemalloc.start()
    pred = client.predict(bags=[inp.SlideBag("big", coords, batches())])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert pred.patch_attention.shape == (n,) and np.isclose(pred.patch_attention.sum(), 1.0, atol=1e-3)
    return peak


def test_large_slide_streams_in_bounded_memory(client, manifest):
    """A 12,000-patch slide: client memory grows only with the features [N, D], not with the patches."""
    shape = manifest.part(mf.PATCH_ENCODER).input(0).shape[1:]
    feature_bytes = manifest.part(mf.PATCH_ENCODER).output(0).shape[-1] * 4
    small, large = 3_000, 12_000
    peak_small, peak_large = _streaming_peak(client, shape, small), _streaming_peak(client, shape, large)
    patch_bytes = large * int(np.prod(shape))
    assert peak_large < patch_bytes / 5, f"client peak {peak_large} bytes for {patch_bytes} bytes of patches"
    # Growth from 3,000 to 12,000 patches is bounded by a few copies of the extra features, nothing per patch image.
    assert peak_large - peak_small < 8 * (large - small) * feature_bytes, (peak_small, peak_large)


def _status(call) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as info:
        call()
    return str(info.value.status()), info.value.message()


def test_bad_requests_are_rejected_and_the_server_stays_healthy(server, manifest, patient):
    url, io = server.grpc_url, ensemble_io(manifest, from_features=True)
    encoder = part_model_name(ENTRY, mf.PATCH_ENCODER)
    patches_name = manifest.part(mf.PATCH_ENCODER).input(0).name
    features_name = manifest.part(mf.PATCH_ENCODER).output(0).name
    feature_dim = manifest.part(mf.PATCH_ENCODER).output(0).shape[-1]
    cases = {
        "wrong dtype": (encoder, {patches_name: patient["patches"][:4].astype(np.float32)}, [features_name]),
        "wrong rank": (encoder, {patches_name: patient["patches"][0, 0]}, [features_name]),
        # Sent to the bag model itself: Triton 2.51 never completes an ensemble request with a 0-row tensor
        # (the client refuses empty bags before sending; README.md, Serving with Triton).
        "empty bag": (part_model_name(ENTRY, mf.MIL_POOL),
                      {io.modality_inputs["pathology"].name: np.zeros((0, feature_dim), np.float32)},
                      [io.patch_attention.name]),
    }
    for label, (model, arrays, outputs) in cases.items():
        status, message = _status(lambda model=model, arrays=arrays, outputs=outputs: _infer(url, model, arrays,
                                                                                                outputs))
        assert status == "StatusCode.INVALID_ARGUMENT", (label, status, message)
        assert message, label
    status, message = _status(lambda: _infer(url, "no_such_model", {patches_name: patient["patches"][:1]},
                                             [features_name]))
    assert status == "StatusCode.NOT_FOUND" and "no_such_model" in message
    assert "is empty" in _status(lambda: _infer(url, *cases["empty bag"]))[1]
    assert server.is_ready()
    with grpcclient.InferenceServerClient(url) as c:
        assert all(c.is_model_ready(m["name"]) for m in server.loaded_models())


def test_server_listens_on_loopback_only(server):
    ports = {server.grpc_port, server.http_port, server.metrics_port}
    listening = [c.laddr for c in psutil.Process(server.pid).net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN]
    assert ports <= {addr.port for addr in listening}
    for addr in listening:
        ip = ipaddress.ip_address(addr.ip)
        ip = getattr(ip, "ipv4_mapped", None) or ip  # gRPC reports ::ffff:127.0.0.1
        assert ip.is_loopback, f"tritonserver listens on {addr.ip}:{addr.port}"


@pytest.mark.parametrize("values, expected", [
    ("[52, 2.1]", "must be a JSON object"),
    ('{"age": 52', "not valid JSON"),
    ('{"age": "fifty"}', "'age'"),
])
def test_client_cli_rejects_bad_clinical_values(server, repository, capsys, values, expected):
    code = client_main(["predict", "--url", server.grpc_url, "--repository", str(repository), "--model", ENTRY,
                        "--clinical-json", values])
    assert code == 2 and expected in capsys.readouterr().err


def test_dead_server_gives_a_clear_error(repository):
    with pytest.raises(ClientError, match="is the server running"):
        SlideClient(f"127.0.0.1:{free_port()}", ENTRY, repository, retries=1, backoff_s=0.05)


def test_repository_error_names_model_and_reason(exports, tmp_path):
    from triton_repo.build import build_repository
    build_repository([exports[SECOND_ENTRY]], tmp_path)
    config = tmp_path / f"{SECOND_ENTRY}_fusion_head" / "config.pbtxt"
    config.write_text(config.read_text().replace("TYPE_BOOL", "TYPE_FP32"))
    with pytest.raises(TritonServerError) as info:
        TritonServer(tmp_path, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(),
                     startup_timeout=60).start()
    assert f"{SECOND_ENTRY}" in str(info.value) and "exited" in str(info.value)
