"""Every bench profile builds its model on any machine: the CUDA profile is built here too, so a GPU run does not
find out first that its recipe wants a weights file or is not the model the targets name."""
from __future__ import annotations

import pytest

from bench.conftest import ENTRY, PROFILES, VIEWER_ENTRY, build_bench_model


@pytest.mark.parametrize("entry", [ENTRY, VIEWER_ENTRY])
@pytest.mark.parametrize("name", PROFILES)
def test_profile_model_builds_with_random_weights(name, entry, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))  # no cached weights to fall back on
    _, config, model = build_bench_model(PROFILES[name].recipe, entry)
    pathology = config["model"]["modalities"]["pathology"]
    assert pathology["pretrained"] is False
    assert not model.training
    if name == "cuda":  # the GPU targets are stated for ResNet-50 at 224 px
        assert (pathology["backbone"], pathology["input_size"]) == ("resnet50", 224)
