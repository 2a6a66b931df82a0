"""The address-only client: the `<entry>` ensemble's config carries the export manifest (sha256-checked), read
back through Triton's model-config API, so a client without the model repository predicts the same."""
from __future__ import annotations

import json

import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from tests.triton.conftest import ENTRY, SECOND_ENTRY
from triton_repo import config as cfg
from triton_repo import discovery
from triton_repo import manifest as mf
from triton_repo.client import SlideClient, main, patient_inputs
from triton_repo.connection import ClientError
from triton_repo.plan import part_model_name, slide_ensemble_name

CLINICAL = {"age": 52, "tumor_size": 2.1, "er_status": 1}


def test_the_entry_ensemble_config_carries_the_manifest(repository):
    """Parsed with Triton's own schema: the manifest verbatim and its sha256; no other model carries it."""
    for entry in (ENTRY, SECOND_ENTRY):
        config = cfg.parse((repository / entry / "config.pbtxt").read_text(), entry)
        text = config.parameters[discovery.MANIFEST_PARAMETER].string_value
        assert text == (repository / entry / "manifest.json").read_text()
        assert config.parameters[discovery.MANIFEST_SHA256_PARAMETER].string_value == discovery.manifest_sha256(text)
        assert json.loads(text)["entry"] == entry
    for other in (slide_ensemble_name(ENTRY), part_model_name(ENTRY, mf.FUSION_HEAD)):
        config = cfg.parse((repository / other / "config.pbtxt").read_text(), other)
        assert discovery.MANIFEST_PARAMETER not in config.parameters


def test_an_oversized_manifest_is_refused():
    with pytest.raises(mf.ManifestError, match="more than the 1048576 a served config may carry"):
        discovery.manifest_parameters("x" * (discovery.MAX_EMBEDDED_MANIFEST_BYTES + 1), "manifest.json")


class _FakeServer:
    """get_model_config answering one config whose manifest was edited after build."""

    def __init__(self, text: str, sha256: str):
        self.response = service_pb2.ModelConfigResponse()
        self.response.config.name = ENTRY
        self.response.config.parameters[discovery.MANIFEST_PARAMETER].string_value = text
        self.response.config.parameters[discovery.MANIFEST_SHA256_PARAMETER].string_value = sha256

    def get_model_config(self, name):
        return self.response


def test_a_manifest_that_fails_its_sha256_is_refused(repository):
    text = (repository / ENTRY / "manifest.json").read_text()
    edited = text.replace('"class_names"', '"class_names" ', 1)
    with pytest.raises(ClientError, match="config.pbtxt was edited after build"):
        discovery.served_manifest(_FakeServer(edited, discovery.manifest_sha256(text)), ENTRY, "fake:1")
    assert discovery.served_manifest(_FakeServer(text, discovery.manifest_sha256(text)), ENTRY, "fake:1").entry == ENTRY


def test_the_server_lists_its_entries(server):
    with SlideClient(server.grpc_url, SECOND_ENTRY) as client:
        assert discovery.served_entries(client.client, server.grpc_url) == sorted([ENTRY, SECOND_ENTRY])
        with pytest.raises(ClientError, match=r"serves 2 entries; pass --model \(one of: \['attention', "):
            discovery.pick_entry(discovery.served_entries(client.client, server.grpc_url), None, server.grpc_url)
        assert discovery.pick_entry([ENTRY], None, server.grpc_url) == ENTRY


def test_a_client_without_the_repository_predicts_the_same(server, repository, tiny_cohort, tmp_path):
    with SlideClient(server.grpc_url, ENTRY, repository, chunk_size=16, tiling_dir=tmp_path) as local:
        pid = next(p.name for p in sorted((tiny_cohort / "mri_raw").iterdir())
                   if list((tiny_cohort / "wsi_raw").glob(f"{p.name}-*.svs")))
        given = patient_inputs(pid, tiny_cohort, local.manifest)
        assert set(given) == {"slides", "mri", "clinical"}
        expected = local.predict(**given)
    with SlideClient(server.grpc_url, ENTRY, chunk_size=16, tiling_dir=tmp_path) as remote:
        assert remote.manifest.preprocessing == local.manifest.preprocessing
        got = remote.predict(**patient_inputs(pid, tiny_cohort, remote.manifest))
    np.testing.assert_allclose(got.probabilities, expected.probabilities, atol=1e-6)
    np.testing.assert_allclose(got.patch_attention, expected.patch_attention, atol=1e-6)
    np.testing.assert_array_equal(got.coords, expected.coords)


def test_cli_with_the_address_alone(server, repository, capsys):
    url = server.grpc_url
    assert main(["predict", "--clinical-json", json.dumps(CLINICAL), "--url", url]) == 2
    err = capsys.readouterr().err
    assert "serves 2 entries; pass --model" in err and ENTRY in err and SECOND_ENTRY in err
    assert main(["predict", "--clinical-json", json.dumps(CLINICAL), "--url", url, "--model", SECOND_ENTRY]) == 0
    remote = json.loads(capsys.readouterr().out)
    assert main(["predict", "--clinical-json", json.dumps(CLINICAL), "--url", url, "--model", SECOND_ENTRY,
                 "--repository", str(repository)]) == 0
    local = json.loads(capsys.readouterr().out)
    assert remote == local
    assert main(["predict", "--clinical-json", "{}", "--url", url, "--model", "nope"]) == 2
    assert "model config of 'nope'" in capsys.readouterr().err
