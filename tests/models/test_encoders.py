"""The patch-encoder registry: every encoder builds offline on the meta device with its documented dim and the
state_dict layout of its published checkpoint; weights files load strictly or fail naming encoder and file."""
from __future__ import annotations

import hashlib
import os
import time
import warnings

import pytest
import torch

from zoo.encoders import main as encoders_main
from zoo.models import build_model_from_config
from zoo.models import weights as weights_module
from zoo.models.encoders import ENCODERS, EncoderRecord, build_trunk
from zoo.models.encoders.pooling import ClsMeanPool
from zoo.models.patch_encoders import PatchEncoder
from zoo.registry import get_entry

# Parameter counts of the published models (model cards / papers), as built here on the meta device; cnn_tiny and
# cnn_ssl are this project's own small CNNs, their counts recorded from the code (a guard against silent changes).
PARAMETERS = {
    "resnet18": 11_176_512, "resnet34": 21_284_672, "resnet50": 23_508_032, "resnet50_trunc": 8_543_296,
    "cnn_tiny": 6_088, "cnn_ssl": 97_680, "uni_v1": 303_350_784, "uni_v2": 681_394_176, "virchow2": 631_239_424,
    "gigapath": 1_134_953_984, "hoptimus0": 1_134_774_272, "kaiko_vits8": 21_670_272,
    "kaiko_vits16": 21_665_664, "kaiko_vitb8": 85_807_872, "kaiko_vitb16": 85_798_656,
    "kaiko_vitl14": 304_370_688, "lunit_vits8": 21_670_272,
}
# A few keys and shapes of the layouts the published checkpoints must have: TRIDENT strictly loads them into timm
# models built with these kwargs (not read from the files themselves, which are gated and not here).
KNOWN_SHAPES = {
    "uni_v1": {"pos_embed": (1, 197, 1024), "blocks.23.ls2.gamma": (1024,)},
    "uni_v2": {"reg_token": (1, 8, 1536), "pos_embed": (1, 256, 1536), "blocks.0.mlp.fc1.weight": (8192, 1536)},
    "virchow2": {"reg_token": (1, 4, 1280), "pos_embed": (1, 261, 1280), "blocks.31.mlp.fc1.weight": (6832, 1280)},
    "gigapath": {"pos_embed": (1, 197, 1536), "patch_embed.proj.weight": (1536, 3, 16, 16)},
    "hoptimus0": {"reg_token": (1, 4, 1536), "pos_embed": (1, 256, 1536)},
    "kaiko_vitl14": {"pos_embed": (1, 1369, 1024), "reg_token": (1, 4, 1024)},
    "resnet50_trunc": {"layer3.5.conv3.weight": (1024, 256, 1, 1)},
}
FOUNDATION = [n for n, r in ENCODERS.items() if r.requires_weights]
SMALL_VIT = "kaiko_vits16"
pytestmark = pytest.mark.filterwarnings("ignore:patch encoder .* weights. random:UserWarning")


def _weights_arg(record: EncoderRecord):
    return "random" if record.requires_weights else None


@pytest.fixture(autouse=True)
def _no_weights_env(monkeypatch, tmp_path):
    """No machine-local weights leak into the tests: env vars unset, the default dir empty."""
    for record in ENCODERS.values():
        monkeypatch.delenv(record.weights_env, raising=False)
    monkeypatch.setenv("ZOO_WEIGHTS_DIR", str(tmp_path / "no_weights_here"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    weights_module._warned_random.clear()


def test_registry_declares_the_foundation_models():
    assert len(ENCODERS) >= 10
    assert {"resnet18", "resnet34", "resnet50", "cnn_tiny", "resnet50_trunc", "uni_v1", "uni_v2", "virchow2",
            "gigapath", "hoptimus0", "kaiko_vits16", "kaiko_vitl14", "lunit_vits8"} <= set(ENCODERS)
    for record in ENCODERS.values():
        assert record.source and record.licence, record.name
        assert record.weights_env == "ZOO_WEIGHTS_" + record.name.upper()
        assert record.requires_weights == (record.family == "timm_vit" or record.self_supervised), record.name
        assert ":" not in record.architecture  # never a hub name
    assert ENCODERS["uni_v1"].weights_env == "ZOO_WEIGHTS_UNI_V1"
    assert ENCODERS["hoptimus0"].mean == (0.707223, 0.578729, 0.703617)
    assert ENCODERS["hoptimus0"].std == (0.211883, 0.230117, 0.177517)
    assert ENCODERS["virchow2"].pooling == "cls_mean"


def test_self_supervised_encoder_without_its_artifact_says_how_to_make_it(monkeypatch, tmp_path):
    from zoo.models.patch_encoders import PatchEncoder

    monkeypatch.setenv("ZOO_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.delenv("ZOO_WEIGHTS_CNN_SSL", raising=False)
    with pytest.raises(FileNotFoundError, match=r"python -m zoo\.pretrain"):
        PatchEncoder("cnn_ssl", input_size=64)


def test_torchvision_urls_are_torchvisions():
    import torchvision

    for record in ENCODERS.values():
        if record.torchvision_weights:
            enum, member = record.torchvision_weights.split(".")
            assert getattr(getattr(torchvision.models, enum), member).url == record.weights_url, record.name


@pytest.mark.parametrize("name", list(ENCODERS))
def test_encoder_builds_on_meta_with_its_dim_and_checkpoint_layout(name, tmp_path):
    record = ENCODERS[name]
    with torch.device("meta"):
        encoder = PatchEncoder(name, weights=_weights_arg(record))
        out = encoder(torch.zeros(2, 3, record.input_size, record.input_size, dtype=torch.uint8))
        reference, _ = build_trunk(record)
    assert tuple(out.shape) == (2, record.embedding_dim) == (2, encoder.out_dim)
    assert sum(p.numel() for p in reference.parameters()) == PARAMETERS[name]  # the published layout
    state = reference.state_dict()
    for key, shape in KNOWN_SHAPES.get(name, {}).items():
        assert tuple(state[key].shape) == shape, (name, key)
    # A saved state_dict of the same architecture (meta: no memory), plus the classifier/cut keys published
    # files carry, loads strictly through the config path and is recorded by sha256.
    published = dict(state)
    for prefix in record.drop_prefixes:
        published[prefix + "weight"] = torch.empty(3, 3, device="meta")
    path = tmp_path / f"{name}.pth"
    torch.save(published, path)
    with torch.device("meta"):
        loaded = PatchEncoder(name, weights=str(path))
    with torch.device("meta"):
        at_input_size, _ = build_trunk(record, record.input_size)  # ViTs: the positional grid of 224 px
    assert {k: tuple(v.shape) for k, v in loaded.trunk.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in at_input_size.state_dict().items()}
    assert loaded.trunk.state_dict().keys() == state.keys()
    assert loaded.preprocessing()["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    # Renamed key / wrong shape: rejected, naming the encoder and the file.
    key = next(k for k in state if k.endswith("weight"))
    renamed = {("renamed." + k if k == key else k): v for k, v in state.items()}
    torch.save(renamed, tmp_path / "renamed.pth")
    with torch.device("meta"), pytest.raises(ValueError, match=rf"renamed\.pth do not match encoder '{name}'.*"
                                                               rf"1 missing.*1 unexpected"):
        PatchEncoder(name, weights=str(tmp_path / "renamed.pth"))
    reshaped = dict(state)
    reshaped[key] = torch.empty(*state[key].shape[:-1], state[key].shape[-1] + 1, device="meta")
    torch.save(reshaped, tmp_path / "reshaped.pth")
    with torch.device("meta"), pytest.raises(ValueError, match=rf"reshaped\.pth do not match encoder '{name}'.*"
                                                               rf"1 shape mismatches.*{key}"):
        PatchEncoder(name, weights=str(tmp_path / "reshaped.pth"))


def test_preprocessing_record_carries_the_encoders_values():
    with torch.device("meta"):
        encoder = PatchEncoder("hoptimus0", weights="random")
    record = encoder.preprocessing()
    assert record["encoder"] == "hoptimus0" and record["embedding_dim"] == 1536 and record["input_size"] == 224
    assert record["normalisation"] == {"mean": [0.707223, 0.578729, 0.703617], "std": [0.211883, 0.230117, 0.177517]}
    assert record["interpolation"] == "bilinear" and record["weights_sha256"] is None
    with torch.device("meta"):
        gigapath = PatchEncoder("gigapath", weights="random")
    assert gigapath.preprocessing()["interpolation"] == "bicubic" and gigapath.resize_size == 256
    # Resize(256) + CenterCrop(224) inside the graph: a 256-px tile is only cropped.
    gigapath.mean, gigapath.std = torch.tensor(gigapath.normalisation[0]).view(1, 3, 1, 1), \
        torch.tensor(gigapath.normalisation[1]).view(1, 3, 1, 1)
    tile = torch.randint(0, 256, (1, 3, 256, 256), dtype=torch.uint8)
    expected = (tile[..., 16:240, 16:240].float() / 255 - gigapath.mean) / gigapath.std
    torch.testing.assert_close(gigapath.preprocess(tile), expected)


def test_weights_random_warns_once_naming_the_encoder():
    with torch.device("meta"), pytest.warns(UserWarning, match="'uni_v1': weights: random"):
        PatchEncoder("uni_v1", weights="random")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.device("meta"):
            PatchEncoder("uni_v1", weights="random")


def test_foundation_model_without_weights_is_an_error(tmp_path, monkeypatch):
    for pretrained in (False, True):
        with torch.device("meta"), pytest.raises(FileNotFoundError, match=r"'uni_v1'.*no weights file.*"
                                                                          r"ZOO_WEIGHTS_UNI_V1.*weights: random"):
            PatchEncoder("uni_v1", pretrained=pretrained)
    with torch.device("meta"), pytest.raises(FileNotFoundError, match=r"missing\.bin for encoder 'virchow2'"):
        PatchEncoder("virchow2", weights=str(tmp_path / "missing.bin"))
    monkeypatch.setenv("ZOO_WEIGHTS_UNI_V1", str(tmp_path / "gone.bin"))
    with torch.device("meta"), pytest.raises(FileNotFoundError, match=r"ZOO_WEIGHTS_UNI_V1=.*gone\.bin names no file"):
        PatchEncoder("uni_v1")


def test_env_var_and_default_path_supply_weights(tmp_path, monkeypatch, capsys):
    with torch.device("meta"):
        state, _ = build_trunk(ENCODERS[SMALL_VIT])
    env_file = tmp_path / "from_env.bin"
    torch.save(state.state_dict(), env_file)
    monkeypatch.setenv("ZOO_WEIGHTS_KAIKO_VITS16", str(env_file))
    with torch.device("meta"):
        assert PatchEncoder(SMALL_VIT).weights_source == "$ZOO_WEIGHTS_KAIKO_VITS16"
    monkeypatch.delenv("ZOO_WEIGHTS_KAIKO_VITS16")
    default = tmp_path / "no_weights_here" / "lunit_vits8" / "pytorch_model.bin"
    default.parent.mkdir(parents=True)
    torch.save(state.state_dict(), default)  # a ViT-S/16 file where the ViT-S/8 lunit_vits8 is looked for
    with torch.device("meta"), pytest.raises(ValueError, match="lunit_vits8"):
        PatchEncoder("lunit_vits8")
    with torch.device("meta"):
        lunit, _ = build_trunk(ENCODERS["lunit_vits8"])
    torch.save(lunit.state_dict(), default)
    with torch.device("meta"):
        assert PatchEncoder("lunit_vits8").weights_source == "default path"
    assert encoders_main([]) == 0
    out = capsys.readouterr().out
    assert "lunit_vits8" in out and "weights [found]" in out and "REQUIRED, not found" in out
    assert "uni_v1" in out and "vit_large_patch16_224" in out and "(0.707223, 0.578729, 0.703617)" in out


def _config(backbone: str, **pathology) -> dict:
    overrides = [f"model.modalities.pathology.backbone={backbone}", "model.modalities.pathology.input_size=224",
                 *(f"model.modalities.pathology.{k}={v}" for k, v in pathology.items())]
    return get_entry("pathology_only").config("tiny", overrides)


def test_config_weights_key_and_load_pretrained_false(tmp_path, monkeypatch):
    config = _config("uni_v1", weights="random")
    assert config["model"]["modalities"]["pathology"]["weights"] == "random"
    with torch.device("meta"), pytest.raises(FileNotFoundError, match="'uni_v1'.*weights: random"):
        build_model_from_config(_config("uni_v1")["model"])
    # Rebuilding from a checkpoint: no file lookup, no env var, no warning, no error.
    monkeypatch.setenv("ZOO_WEIGHTS_UNI_V1", str(tmp_path / "gone.bin"))
    for weights in (None, "random", str(tmp_path / "missing.bin")):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with torch.device("meta"):
                model = build_model_from_config(_config("uni_v1", **({"weights": weights} if weights else {}))
                                                ["model"], load_pretrained=False)
        assert model.patch_encoder.out_dim == 1024 and model.patch_encoder.weights_sha256 is None


def test_uni_v1_real_state_dict_loads_strictly_on_cpu(tmp_path):
    """ViT-L/16 (303 M parameters, ~1.2 GB): a real random state_dict saved and strictly loaded by config."""
    start = time.perf_counter()
    torch.manual_seed(0)
    source, _ = build_trunk(ENCODERS["uni_v1"])
    path = tmp_path / "pytorch_model.bin"
    torch.save(source.state_dict(), path)
    expected = {k: source.state_dict()[k].clone() for k in ("pos_embed", "blocks.23.ls2.gamma", "norm.weight")}
    del source
    model = build_model_from_config(_config("uni_v1", weights=str(path))["model"])
    trunk = model.patch_encoder.trunk
    assert all(not t.is_meta and t.dtype == torch.float32 for t in trunk.state_dict().values())
    for key, value in expected.items():
        assert torch.equal(trunk.state_dict()[key], value), key
    assert model.patch_encoder.preprocessing()["weights_sha256"] == weights_module.sha256_file(path)
    assert time.perf_counter() - start < 240


def test_small_encoders_run_on_cpu(tmp_path):
    g = torch.Generator().manual_seed(0)
    patches = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8, generator=g)
    for name, size in (("cnn_tiny", 32), (SMALL_VIT, 32), ("resnet50_trunc", 64)):
        encoder = PatchEncoder(name, input_size=size, weights=_weights_arg(ENCODERS[name])).eval()
        with torch.no_grad():
            out = encoder(patches)
        assert out.shape == (3, ENCODERS[name].embedding_dim) and torch.isfinite(out).all(), name
    # resnet50_trunc = torchvision ResNet-50 through layer3, average-pooled (CLAM's resnet50_baseline).
    import torchvision

    full = torchvision.models.resnet50(weights=None).eval()
    path = tmp_path / "resnet50.safetensors"
    from safetensors.torch import save_file

    save_file(full.state_dict(), str(path))  # the full published layout: fc and layer4 are dropped
    trunc = PatchEncoder("resnet50_trunc", weights=str(path), input_size=64).eval()
    with torch.no_grad():
        x = trunc.preprocess(patches)
        h = full.maxpool(full.relu(full.bn1(full.conv1(x))))
        expected = full.layer3(full.layer2(full.layer1(h))).mean(dim=(2, 3))
        torch.testing.assert_close(trunc(patches), expected, rtol=1e-4, atol=1e-5)


def test_cls_mean_pooling_skips_register_tokens():
    """Virchow2's output on a small ViT with 4 registers: CLS ++ mean of the patch tokens only."""
    record = EncoderRecord("vit_reg_test", "timm_vit", "vit_small_patch16_224", 768,
                           {"img_size": 32, "num_classes": 0, "reg_tokens": 4, "global_pool": "", "depth": 2},
                           input_size=32, pooling="cls_mean", patch_size=16)
    trunk, pool = build_trunk(record)
    assert isinstance(pool, ClsMeanPool) and pool.num_prefix_tokens == 5
    tokens = trunk.eval()(torch.randn(2, 3, 32, 32))
    assert tokens.shape == (2, 5 + 4, 384)
    torch.testing.assert_close(pool(tokens), torch.cat([tokens[:, 0], tokens[:, 5:].mean(1)], dim=-1))


def test_vit_input_size_must_fit_its_patch_size():
    with torch.device("meta"), pytest.raises(ValueError, match="multiple of encoder 'uni_v1'.*patch size 16"):
        PatchEncoder("uni_v1", weights="random", input_size=100)
    assert os.environ.get("ZOO_WEIGHTS_UNI_V1") is None
