"""model.fusion.late_residual: served logits = mean of the present modalities' unimodal logits + the fused term."""
from __future__ import annotations

import pytest
import torch

from zoo import spec
from zoo.models.builder import MultiModalModelBuilder
from zoo.models.fusion import late_fusion_logits
from zoo.registry import FUSION_STRATEGIES


def _model(fusion: str = "attention", late_residual: bool = True, auxiliary_heads: bool = True, late_rule="mean"):
    torch.manual_seed(0)
    builder = MultiModalModelBuilder(num_classes=4)
    builder.add_modality("mri", "resnet3d_tiny", input_channels=1, width=4)
    builder.add_modality("clinical", "mlp", input_dim=12, hidden_dims=[8])
    builder.set_fusion(fusion, hidden_dim=8, num_heads=2, auxiliary_heads=auxiliary_heads,
                       late_residual=late_residual, late_rule=late_rule)
    return builder.build().eval()


def _batch(b: int = 3):
    g = torch.Generator().manual_seed(1)
    presence = torch.tensor([[True, True, True], [False, True, False], [False, False, True]])[:b]
    return {spec.KEY_MRI: torch.randn(b, 1, 8, 8, 4, generator=g), spec.KEY_CLINICAL: torch.randn(b, 12, generator=g),
            spec.KEY_PRESENCE: presence}


@pytest.mark.parametrize("fusion", FUSION_STRATEGIES)
def test_starts_as_late_fusion_of_the_present_modalities(fusion):
    model = _model(fusion)
    batch = _batch()
    with torch.no_grad():
        logits, aux = model(batch)
    unimodal = aux[spec.AUX_UNIMODAL_LOGITS]
    mri, clinical = unimodal["mri"], unimodal["clinical"]
    # row 0 both present: their mean; row 1 MRI only; row 2 clinical only (canonical presence order path, mri, clin)
    expected = torch.stack([(mri[0] + clinical[0]) / 2, mri[1], clinical[2]])
    torch.testing.assert_close(logits, expected)


def test_product_rule_sums_the_present_heads_log_probabilities():
    model = _model(late_rule="product")
    with torch.no_grad():
        logits, aux = model(_batch())
    log_p = {m: torch.log_softmax(v, dim=1) for m, v in aux[spec.AUX_UNIMODAL_LOGITS].items()}
    expected = torch.stack([log_p["mri"][0] + log_p["clinical"][0], log_p["mri"][1], log_p["clinical"][2]])
    torch.testing.assert_close(logits, expected)
    # softmax of the served logits = the heads' probabilities multiplied and renormalised
    prob = {m: torch.softmax(v, dim=1) for m, v in aux[spec.AUX_UNIMODAL_LOGITS].items()}
    product = prob["mri"][0] * prob["clinical"][0]
    torch.testing.assert_close(torch.softmax(logits[0], dim=0), product / product.sum())


def test_unknown_late_rule_is_refused():
    with pytest.raises(ValueError, match="late_rule='median'"):
        _model(late_rule="median")


def test_fused_term_is_added_once_trained():
    model = _model()
    with torch.no_grad():
        model.fusion_head.head.net[-1].weight.normal_()
        logits, aux = model(_batch())
    late = late_fusion_logits(list(aux[spec.AUX_UNIMODAL_LOGITS].values()), aux[spec.AUX_PRESENCE])
    assert not torch.allclose(logits, late)


def test_nothing_present_gives_a_finite_prior():
    late = late_fusion_logits([torch.ones(2, 4), torch.ones(2, 4)], torch.zeros(2, 2, dtype=torch.bool))
    assert torch.equal(late, torch.zeros(2, 4))


def test_late_residual_needs_auxiliary_heads():
    with pytest.raises(ValueError, match="late_residual needs auxiliary_heads"):
        _model(auxiliary_heads=False)


def test_heads_of_earlier_versions_load():
    """Entry versions 1.2-1.3 stored the per-modality heads as unimodal_heads.<modality>.*; they still load."""
    model = _model(late_residual=False)
    state = model.state_dict()
    legacy = {k: v for k, v in state.items() if not k.startswith("fusion_head.unimodal_heads.")}
    for i, modality in enumerate(model.modalities):
        for name in ("weight", "bias"):
            legacy[f"unimodal_heads.{modality}.{name}"] = state[f"fusion_head.unimodal_heads.{i}.{name}"] + 1.0
    fresh = _model(late_residual=False)
    fresh.load_state_dict(legacy)
    torch.testing.assert_close(fresh.fusion_head.unimodal_heads[1].bias, state["fusion_head.unimodal_heads.1.bias"] + 1)
