"""MIL pooling: padding and order invariance, attention normalisation, ONNX export with a dynamic bag size."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from zoo import build_model
from zoo.models.mil import AGGREGATORS, build_mil

torch.set_num_threads(2)


def bag(b=2, n=7, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(b, n, d, generator=g)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[1, 4:] = False
    return features, mask


@pytest.mark.parametrize("kind", sorted(AGGREGATORS))
def test_padding_never_changes_output_and_gets_zero_attention(kind):
    torch.manual_seed(0)
    mil = build_mil(12, kind, hidden_dim=8).eval()
    features, mask = bag()
    garbage = features.clone()
    garbage[~mask] = torch.tensor(float("nan"))
    with torch.no_grad():
        emb, attn = mil(features, mask)
        emb_nan, attn_nan = mil(garbage, mask)
        # the same bag without any padding
        emb_short, attn_short = mil(features[1:, :4], mask[1:, :4])
    assert torch.isfinite(emb_nan).all()
    assert torch.equal(emb, emb_nan) and torch.equal(attn, attn_nan)
    assert (attn[~mask] == 0).all()
    assert torch.allclose(attn.sum(1), torch.ones(2), atol=1e-6)
    assert torch.allclose(emb[1:], emb_short, atol=1e-6)
    assert torch.allclose(attn[1:, :4], attn_short, atol=1e-6)


@pytest.mark.parametrize("kind", sorted(AGGREGATORS))
def test_invariant_to_patch_order(kind):
    torch.manual_seed(0)
    mil = build_mil(12, kind, hidden_dim=8).eval()
    features, mask = bag()
    perm = torch.randperm(features.shape[1])
    with torch.no_grad():
        emb, attn = mil(features, mask)
        emb_p, attn_p = mil(features[:, perm], mask[:, perm])
    assert torch.allclose(emb, emb_p, atol=1e-6)
    assert torch.allclose(attn[:, perm], attn_p, atol=1e-6)


def test_attention_mil_attends_unequally_and_empty_bag_is_zero():
    torch.manual_seed(0)
    mil = build_mil(12, "attention_mil", hidden_dim=8).eval()
    features, mask = bag()
    mask[0] = False
    with torch.no_grad():
        emb, attn = mil(features, mask)
    assert (emb[0] == 0).all() and (attn[0] == 0).all()
    assert attn[1, :4].std() > 0


@pytest.mark.parametrize("kind", sorted(AGGREGATORS))
def test_fitted_standardization_equals_standardizing_the_input(kind):
    torch.manual_seed(0)
    mil = build_mil(12, kind, hidden_dim=8).eval()
    features, mask = bag()
    features = features * 0.05 + 3.0  # offset-dominated, like frozen random-encoder features
    mean, std = features[mask].mean(0), features[mask].std(0)
    with torch.no_grad():
        emb_manual, attn_manual = mil((features - mean) / std, mask)
        mil.set_input_standardization(mean, std)
        emb, attn = mil(features, mask)
        garbage = features.clone()
        garbage[~mask] = torch.tensor(float("nan"))
        emb_nan, _ = mil(garbage, mask)
    assert torch.allclose(emb, emb_manual, atol=1e-5) and torch.allclose(attn, attn_manual, atol=1e-6)
    assert torch.equal(emb, emb_nan)  # padding stays inert after standardisation
    state = mil.state_dict()  # the statistics travel with the weights
    assert torch.equal(state["input_mean"], mean) and torch.equal(state["input_std"], std)


def test_standardization_rejects_bad_statistics():
    mil = build_mil(12, "attention_mil", hidden_dim=8)
    with pytest.raises(ValueError, match="12 values"):
        mil.set_input_standardization(torch.zeros(5), torch.ones(5))
    with pytest.raises(ValueError, match="NaN"):
        mil.set_input_standardization(torch.full((12,), float("nan")), torch.ones(12))
    mil.set_input_standardization(torch.zeros(12), torch.zeros(12))  # constant dimensions: std floored, no inf
    assert (mil.input_std > 0).all()


def test_unknown_aggregator_names_choices():
    with pytest.raises(ValueError, match="attention_mil"):
        build_mil(12, "attention-mil")


@pytest.mark.parametrize("name, aggregator", [("attention", "attention_mil"), ("pathology_only", "max")])
def test_mil_exports_to_onnx_with_dynamic_bag_size(name, aggregator, tmp_path):
    import onnxruntime as ort

    model = build_model(name, recipe="tiny", **{"model.modalities.pathology.aggregator.type": aggregator})
    mil = model.mil.eval()
    d = model.patch_encoder.out_dim
    mil.set_input_standardization(torch.rand(d), torch.rand(d) + 0.5)  # the graph must carry the statistics
    features, mask = torch.randn(1, 6, d), torch.ones(1, 6, dtype=torch.bool)
    path = tmp_path / "mil.onnx"
    n = torch.export.Dim("n", min=1, max=100_000)
    torch.onnx.export(mil, (features, mask), str(path), dynamo=True, input_names=["features", "mask"],
                      output_names=["embedding", "attention"],
                      dynamic_shapes={"features": {1: n}, "mask": {1: n}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for size in (3, 11):
        x = torch.randn(1, size, d)
        m = torch.ones(1, size, dtype=torch.bool)
        m[0, size - 1] = False
        emb, attn = session.run(None, {"features": x.numpy(), "mask": m.numpy()})
        with torch.no_grad():
            ref_emb, ref_attn = mil(x, m)
        np.testing.assert_allclose(emb, ref_emb.numpy(), atol=1e-5)
        np.testing.assert_allclose(attn, ref_attn.numpy(), atol=1e-5)
        assert attn[0, size - 1] == 0
