"""Config schema, overrides, builder/config equivalence, registry lookups, the seed's builder code, the CLI."""
from __future__ import annotations

import pytest
import torch
import yaml

from zoo import (
    ConfigError,
    MultiModalModelBuilder,
    build_model,
    build_model_from_config,
    get_entry,
    list_entries,
    load_config,
    save_config,
    spec,
)
from zoo.__main__ import main as zoo_main
from zoo.registry import Entry, register

torch.set_num_threads(2)


def test_defaults_round_trip_through_a_file(tmp_path):
    config = get_entry("cross_attention-path_clin").config("tiny", ["training.epochs=3"])
    path = save_config(config, tmp_path / "config.yaml")
    assert load_config(path) == config
    assert config["training"]["epochs"] == 3
    assert list(config["model"]["modalities"]) == ["pathology", "clinical"]
    assert config["data"]["modalities"]["mri"]["enabled"] is False


def test_unknown_key_names_it_and_suggests_the_closest(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"model": {"fusion": {"hiden_dim": 64}}}))
    with pytest.raises(ConfigError, match=r"model\.fusion\.hiden_dim.*model\.fusion\.hidden_dim"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"training\.lr.*Did you mean: training\.optimizer\.lr"):
        load_config(overrides=["training.lr=0.001"])


@pytest.mark.parametrize("override, key", [
    ("training.epochs=ten", "training.epochs"),
    ("model.fusion.hidden_dim=1.5", "model.fusion.hidden_dim"),
    ("training.mixed_precision=3", "training.mixed_precision"),
    ("model.modalities.clinical.hidden_dims=[a, 2]", "model.modalities.clinical.hidden_dims"),
    ("model.fusion=attention", "model.fusion"),
])
def test_wrong_type_names_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(overrides=[override])


def test_overrides_are_yaml_values_coerced_to_the_schema():
    config = load_config(overrides=["training.optimizer.lr=1e-3", "model.modalities.pathology.pretrained=/w.pt",
                                    "model.modalities.clinical.hidden_dims=[8, 4]",
                                    "data.modalities.mri.enabled=false"])
    assert config["training"]["optimizer"]["lr"] == pytest.approx(0.001)
    assert config["model"]["modalities"]["pathology"]["pretrained"] == "/w.pt"
    assert config["model"]["modalities"]["clinical"]["hidden_dims"] == [8, 4]
    assert "mri" not in config["model"]["modalities"]
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(overrides=["training.epochs"])


def test_derived_model_inputs_follow_the_data_section():
    config = load_config(overrides=["data.modalities.mri.sequences=[T1, T2]",
                                    "data.modalities.clinical.features=[age, tumor_size]"])
    assert config["model"]["modalities"]["mri"]["input_channels"] == 2
    assert config["model"]["modalities"]["clinical"]["input_dim"] == 4
    with pytest.raises(ConfigError, match=r"clinical\.input_dim = 6.*12"):
        load_config(overrides=["model.modalities.clinical.input_dim=6"])
    assert get_entry("clinical_norec_only").config("tiny")["model"]["modalities"]["clinical"]["input_dim"] == \
        2 * len(spec.CLINICAL_FEATURES_NO_RECEPTORS)


def _shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_builder_and_config_build_the_same_model():
    config = get_entry("gated").config("tiny")
    m = config["model"]["modalities"]
    fusion = config["model"]["fusion"]
    builder = MultiModalModelBuilder(num_classes=4)
    builder.add_modality("clinical", backbone="mlp", input_dim=m["clinical"]["input_dim"],
                         hidden_dims=m["clinical"]["hidden_dims"], dropout=m["clinical"]["dropout"])
    builder.add_modality("pathology", backbone="cnn_tiny", input_channels=3, pretrained=False,
                         aggregator=m["pathology"]["aggregator"], input_size=m["pathology"]["input_size"])
    builder.add_modality("mri", backbone="resnet3d_18", input_channels=1, width=m["mri"]["width"])
    builder.set_fusion(fusion_type="gated", hidden_dim=fusion["hidden_dim"], num_heads=fusion["num_heads"])
    builder.set_head("classification", dropout=0.5)
    from_builder = builder.build()
    from_config = build_model_from_config(config["model"])
    assert from_builder.modalities == from_config.modalities == spec.MODALITIES
    assert _shapes(from_builder) == _shapes(from_config)


def test_seed_section_6_1_code(tmp_path, monkeypatch):
    """The seed's builder code: pretrained=True without cached weights is a clear error; False builds."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def seed_builder(pretrained):
        builder = MultiModalModelBuilder(num_classes=4)
        builder.add_modality(name="pathology", backbone="resnet50", input_channels=3, pretrained=pretrained,
                             aggregator="attention_mil")
        builder.add_modality(name="mri", backbone="resnet3d_18", input_channels=1, pretrained=False)
        builder.add_modality(name="clinical", backbone="mlp", input_dim=6, hidden_dims=[64, 128, 256])
        builder.set_fusion(fusion_type="attention", hidden_dim=512)
        builder.set_head("classification", dropout=0.5)
        return builder.build()

    with pytest.raises(FileNotFoundError, match=r"resnet50-11ad3fa6\.pth.*pretrained: false"):
        seed_builder(True)
    model = seed_builder(False)
    assert model.modalities == spec.MODALITIES
    assert model.patch_encoder.out_dim == 2048 and model.clinical_encoder.input_dim == 6


def test_pretrained_path_loads_local_weights(tmp_path):
    source = build_model("pathology_only", recipe="tiny")
    torch.save({"state_dict": source.patch_encoder.trunk.state_dict()}, tmp_path / "trunk.pt")
    loaded = build_model("pathology_only", recipe="tiny",
                         model__modalities__pathology__pretrained=str(tmp_path / "trunk.pt"))
    for key, value in source.patch_encoder.trunk.state_dict().items():
        assert torch.equal(value, loaded.patch_encoder.trunk.state_dict()[key])
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        build_model("pathology_only", recipe="tiny",
                    model__modalities__pathology__pretrained=str(tmp_path / "missing.pt"))
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "wrong.pt")
    with pytest.raises(ValueError, match="do not match"):
        build_model("pathology_only", recipe="tiny",
                    model__modalities__pathology__pretrained=str(tmp_path / "wrong.pt"))


def test_frozen_encoder_has_no_trainable_weights_and_stays_in_eval():
    model = build_model("pathology_only", recipe="tiny", model__modalities__pathology__freeze=True).train()
    assert not any(p.requires_grad for p in model.patch_encoder.parameters())
    assert not model.patch_encoder.trunk.training and model.mil.training


def test_registry_lookup_filters_and_duplicates():
    assert list_entries("attention*",
                        exclude="*-mri_clin") == ["attention", "attention-path_clin", "attention-path_mri"]
    assert list_entries(["*_only"]) == ["clinical_norec_only", "clinical_only", "mri_only", "pathology_only"]
    with pytest.raises(KeyError, match="Did you mean: attention"):
        get_entry("atention")
    with pytest.raises(ValueError, match="already registered"):
        register(Entry("gated", ("mri",), "identity", "unimodal", "duplicate"), {"gated": get_entry("gated")})
    with pytest.raises(ConfigError, match="unknown recipe 'gpux'"):
        get_entry("gated").config("gpux")
    with pytest.raises(ValueError, match="unknown fusion type 'concat'"):
        build_model("gated", recipe="tiny", model__fusion__type="concat")


def test_recipes_set_what_they_promise():
    gpu, cpu, tiny = (get_entry("attention").config(r) for r in ("gpu", "cpu", "tiny"))
    assert gpu["model"]["modalities"]["pathology"]["backbone"] == "resnet50"
    assert gpu["training"]["mixed_precision"] and gpu["training"]["epochs"] == 100
    assert cpu["model"]["modalities"]["pathology"] | {"backbone": "cnn_ssl", "freeze": True, "pretrained": False} \
        == cpu["model"]["modalities"]["pathology"]
    assert cpu["training"]["feature_cache"] and cpu["data"]["batch_size"] == 16
    assert cpu["data"]["modalities"]["mri"]["sequences"] == ["T1", "T2"]
    assert cpu["model"]["modalities"]["mri"]["input_channels"] == 2 and cpu["model"]["modalities"]["mri"]["statistics"]
    assert cpu["model"]["fusion"]["auxiliary_heads"] and cpu["training"]["loss"]["auxiliary_weight"] > 0
    assert cpu["model"]["fusion"]["late_residual"]
    assert 0 < cpu["training"]["warm_start_epochs"] < cpu["training"]["epochs"]
    assert cpu["model"]["modalities"]["mri"] | {"norm": "group", "cnn_gate": True} == cpu["model"]["modalities"]["mri"]
    built = build_model_from_config(cpu["model"], load_pretrained=False)
    assert built.fusion_head.late_residual and built.has_unimodal_heads
    assert cpu["training"]["loss"]["class_weights"]
    assert tiny["model"]["modalities"]["pathology"]["backbone"] == "cnn_tiny"
    assert tiny["model"]["modalities"]["mri"]["width"] == 4 and tiny["model"]["fusion"]["hidden_dim"] == 16


def test_cli_lists_entries_and_prints_configs(capsys):
    assert zoo_main(["list", "--include", "*_only", "--recipe", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "clinical_norec_only" in out and "attention" not in out and "identity" in out
    # the default (cpu) recipe lists on a machine without any cnn_ssl weights: counting parameters loads none
    assert zoo_main(["list", "--include", "late", "attention"]) == 0
    out = capsys.readouterr().out
    for name in ("late", "attention"):  # the counts the list prints are those of the models the cpu recipe builds
        built = build_model_from_config(get_entry(name).config("cpu")["model"], load_pretrained=False)
        assert f"{sum(p.numel() for p in built.parameters()):,}" in out
    assert zoo_main(["config", "mri_only", "--recipe", "tiny", "--set", "training.epochs=7"]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["training"]["epochs"] == 7 and list(config["model"]["modalities"]) == ["mri"]
    assert zoo_main(["config", "mri_only", "--set", "training.lr=1"]) == 2
    assert "training.optimizer.lr" in capsys.readouterr().err
