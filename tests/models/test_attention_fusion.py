"""Attention fusion (entry version 1.5): softmax weights scale each present modality's token, the tokens are
concatenated and mixed; uniform weights give concatenate fusion; `concat_pool` appends the weighted sum to the
unweighted tokens and starts as concatenate fusion; checkpoints from before keep summing."""
from __future__ import annotations

import pytest
import torch

from zoo.models.fusion import AttentionFusion, ConcatenateFusion

DIMS = [6, 5, 4]
PRESENCE = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 1, 0], [0, 0, 0]], dtype=torch.bool)


def _inputs():
    g = torch.Generator().manual_seed(3)
    return [torch.randn(len(PRESENCE), d, generator=g) for d in DIMS]


def _attention(combine="concat"):
    torch.manual_seed(0)
    fusion = AttentionFusion(DIMS, hidden_dim=8, dropout=0.0, combine=combine).eval()
    with torch.no_grad():  # weights far from uniform, as after training
        fusion.score[-1].weight.normal_(std=3.0)
    return fusion


def _concatenate_with_the_same_tokens(attention):
    concatenate = ConcatenateFusion(DIMS, hidden_dim=8, dropout=0.0).eval()
    state = {k: v for k, v in attention.state_dict().items() if not k.startswith(("score.", "mix."))}
    width = len(DIMS) * 8
    state.update({"mix.0.weight": attention.mix[0].weight[:, :width], "mix.0.bias": attention.mix[0].bias})
    concatenate.load_state_dict(state)
    return concatenate


def test_uniform_weights_are_concatenate_fusion():
    attention = _attention()
    with torch.no_grad():
        attention.score[-1].weight.zero_()
        fused, weights = attention(_inputs(), PRESENCE)
        expected, uniform = _concatenate_with_the_same_tokens(attention)(_inputs(), PRESENCE)
    torch.testing.assert_close(fused, expected)
    torch.testing.assert_close(weights[:3], uniform[:3])


def test_weights_scale_each_present_token_before_concatenation():
    attention = _attention()
    with torch.no_grad():
        fused, weights = attention(_inputs(), PRESENCE)
        tokens = attention.tokens(_inputs(), PRESENCE)
    assert not torch.allclose(weights[0], torch.full((3,), 1 / 3), atol=0.05), "the weights are uniform: test is void"
    count = PRESENCE.sum(1, keepdim=True).float()
    scale = torch.where(PRESENCE, weights * count, torch.ones_like(weights))  # a missing slot keeps its token
    expected = attention.mix((tokens * scale.unsqueeze(-1)).flatten(1))
    torch.testing.assert_close(fused, expected)
    assert torch.isfinite(fused[3]).all()  # nothing present: the learned missing tokens, finite


def test_concat_pool_starts_as_concatenate_fusion_whatever_the_weights():
    torch.manual_seed(0)
    attention = AttentionFusion(DIMS, hidden_dim=8, dropout=0.0, combine="concat_pool").eval()
    with torch.no_grad():
        attention.score[-1].weight.normal_(std=3.0)  # far from uniform: the pooled slice alone keeps them out
        fused, weights = attention(_inputs(), PRESENCE)
        expected, _ = _concatenate_with_the_same_tokens(attention)(_inputs(), PRESENCE)
    assert not torch.allclose(weights[0], torch.full((3,), 1 / 3), atol=0.05), "the weights are uniform: test is void"
    torch.testing.assert_close(fused, expected)


def test_concat_pool_appends_the_weighted_sum_to_the_unweighted_tokens():
    attention = _attention("concat_pool")
    with torch.no_grad():
        attention.mix[0].weight.normal_()  # as after training: the pooled slice is no longer 0
        fused, weights = attention(_inputs(), PRESENCE)
        tokens = attention.tokens(_inputs(), PRESENCE)
        unweighted, _ = _concatenate_with_the_same_tokens(attention)(_inputs(), PRESENCE)
    pooled = torch.einsum("bm,bmh->bh", weights, tokens)
    torch.testing.assert_close(fused, attention.mix(torch.cat([tokens.flatten(1), pooled], dim=1)))
    assert not torch.allclose(fused, unweighted), "the pooled token changes nothing: test is void"
    torch.testing.assert_close(weights[2], torch.tensor([0.0, 1.0, 0.0]))  # only the present modality is pooled
    assert torch.isfinite(fused[3]).all()


def test_concat_pool_exports_with_parity(tmp_path):
    from export.pipeline import export_checkpoint
    from export.source import Target
    from tests.export.conftest import TEST_SIZES, write_tiny_checkpoint
    from tests.export.test_export_entries import LEGACY_ONNX
    from zoo.checkpoint import load_checkpoint, save_checkpoint

    checkpoint = write_tiny_checkpoint("attention", tmp_path / "outputs" / "attention" / "best.pt", seed=1,
                                       overrides=("model.fusion.attention_combine=concat_pool",))
    payload = load_checkpoint(checkpoint)
    key = "fusion_head.fusion.mix.0.weight"
    torch.manual_seed(2)  # a trained pooled slice (it starts at 0, which parity could not tell from a missing one)
    payload["state_dict"][key] = torch.randn_like(payload["state_dict"][key])
    save_checkpoint(checkpoint, payload)
    result = export_checkpoint(Target(checkpoint, "attention"), LEGACY_ONNX, tmp_path / "export", sizes=TEST_SIZES,
                               progress=False)
    assert result.passed, result.report.to_markdown()


def test_sum_combine_is_the_weighted_average_of_tokens():
    attention = _attention("sum")
    assert not hasattr(attention, "mix")
    with torch.no_grad():
        fused, weights = attention(_inputs(), PRESENCE)
        tokens = attention.tokens(_inputs(), PRESENCE)
    torch.testing.assert_close(fused, torch.einsum("bm,bmh->bh", weights, tokens))


def test_unknown_combine_is_refused():
    with pytest.raises(ValueError, match="attention_combine='max'.*concat, concat_pool, sum"):
        AttentionFusion(DIMS, hidden_dim=8, combine="max")


def test_unknown_combine_is_refused_for_any_strategy():
    from zoo import build_model

    with pytest.raises(ValueError, match="attention_combine='max'"):
        build_model("concatenate", recipe="tiny", model__fusion__attention_combine="max")


def test_checkpoint_from_before_the_option_loads_as_sum(tmp_path):
    """A 1.4 attention checkpoint records no attention_combine: it is rebuilt summing, as it was trained."""
    from tests.export.conftest import write_tiny_checkpoint
    from zoo.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint

    path = write_tiny_checkpoint("attention", tmp_path / "best.pt", version="1.4",
                                 overrides=("model.fusion.attention_combine=sum",))
    payload = load_checkpoint(path)
    del payload["config"]["model"]["fusion"]["attention_combine"]
    save_checkpoint(path, payload)
    with pytest.raises(CheckpointError, match=r"version '1\.4'.*version '1\.5' is in the registry"):
        load_model(path, "attention")
    model, _ = load_model(path, "attention", version="1.4")
    assert model.fusion_head.fusion.combine == "sum"
