"""Attention fusion (entry version 1.5): softmax weights scale each present modality's token, the tokens are
concatenated and mixed; uniform weights give concatenate fusion; checkpoints from before keep summing."""
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


def test_uniform_weights_are_concatenate_fusion():
    attention = _attention()
    with torch.no_grad():
        attention.score[-1].weight.zero_()
    concatenate = ConcatenateFusion(DIMS, hidden_dim=8, dropout=0.0).eval()
    concatenate.load_state_dict({k: v for k, v in attention.state_dict().items() if not k.startswith("score.")})
    with torch.no_grad():
        fused, weights = attention(_inputs(), PRESENCE)
        expected, uniform = concatenate(_inputs(), PRESENCE)
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


def test_sum_combine_is_the_weighted_average_of_tokens():
    attention = _attention("sum")
    assert not hasattr(attention, "mix")
    with torch.no_grad():
        fused, weights = attention(_inputs(), PRESENCE)
        tokens = attention.tokens(_inputs(), PRESENCE)
    torch.testing.assert_close(fused, torch.einsum("bm,bmh->bh", weights, tokens))


def test_unknown_combine_is_refused():
    with pytest.raises(ValueError, match="attention_combine='max'.*concat, sum"):
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
