"""The `late` entries (fusion type late): no fused term; each modality's head is trained on its own loss, exactly as
its single-modality entry would be, and the served prediction is the product of the heads' probabilities."""
from __future__ import annotations

import pytest
import torch

from zoo import spec
from zoo.models.builder import MultiModalModelBuilder
from zoo.registry import get_entry, list_entries
from zoo.training.trainer import MultimodalTrainer

MODALITY_OPTIONS = {
    "mri": dict(backbone="resnet3d_tiny", input_channels=1, width=4, statistics=True, norm="group", cnn_gate=True),
    "clinical": dict(backbone="mlp", input_dim=12, hidden_dims=[8], dropout=0.0),
}


def _model(modalities: tuple[str, ...], fusion: str = "late", seed: int = 0):
    torch.manual_seed(seed)
    builder = MultiModalModelBuilder(num_classes=4)
    for modality in modalities:
        builder.add_modality(modality, **MODALITY_OPTIONS[modality])
    builder.set_fusion(fusion, hidden_dim=8, num_heads=2, late_rule="product").set_head(dropout=0.0)
    return builder.build()


def _batches(n: int = 3, size: int = 8):
    g = torch.Generator().manual_seed(1)
    return [{spec.KEY_MRI: torch.randn(size, 1, 8, 8, 4, generator=g),
             spec.KEY_CLINICAL: torch.randn(size, 12, generator=g),
             spec.KEY_LABEL: torch.randint(0, 4, (size,), generator=g)} for _ in range(n)]


def _config(epochs: int) -> dict:
    # a warm start and an auxiliary weight that a heads-only model must ignore
    return {"training": {"epochs": epochs, "warm_start_epochs": 1, "optimizer": {"lr": 0.01},
                         "loss": {"auxiliary_weight": 0.5}}}


def _train(model, data, epochs: int = 3) -> dict:
    return MultimodalTrainer(model, _config(epochs), data, data[:1], progress=False, log=lambda _m: None,
                             device="cpu").train()


def test_serves_the_product_of_the_present_heads():
    model = _model(("mri", "clinical")).eval()
    assert model.heads_only and model.fusion_head.fusion is None and model.fusion_head.head is None
    presence = torch.tensor([[False, True, True], [False, True, False], [False, False, True]])
    batch = {**_batches(n=1, size=3)[0], spec.KEY_PRESENCE: presence}
    with torch.no_grad():
        logits, aux = model(batch)
    p = {m: torch.softmax(v, dim=1) for m, v in aux[spec.AUX_UNIMODAL_LOGITS].items()}
    product = p["mri"][0] * p["clinical"][0]
    expected = torch.stack([product / product.sum(), p["mri"][1], p["clinical"][2]])
    torch.testing.assert_close(torch.softmax(logits, dim=1), expected)
    # fusion attention over (mri, clinical): uniform over the present ones
    torch.testing.assert_close(aux[spec.AUX_FUSION_ATTENTION], torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.0, 1.0]]))


def test_training_equals_training_each_single_modality_model_alone():
    """Same initial weights, same batches: after training, every encoder and head of the late model equals the one
    trained alone as a single-modality model (the product of experts, not a jointly fitted combination)."""
    data = _batches()
    late = _model(("mri", "clinical"))
    singles = {m: _model((m,), fusion="identity") for m in ("mri", "clinical")}
    parts = {"mri": "mri_encoder", "clinical": "clinical_encoder"}
    for i, (modality, single) in enumerate(singles.items()):
        getattr(single, parts[modality]).load_state_dict(getattr(late, parts[modality]).state_dict())
        single.fusion_head.head.load_state_dict(late.fusion_head.unimodal_heads[i].state_dict())
    _train(late, data)
    for i, (modality, single) in enumerate(singles.items()):
        _train(single, data)
        for (name, trained), (_, alone) in zip(getattr(late, parts[modality]).state_dict().items(),
                                               getattr(single, parts[modality]).state_dict().items()):
            torch.testing.assert_close(trained, alone, msg=f"{modality} encoder {name}")
        for trained, alone in zip(late.fusion_head.unimodal_heads[i].state_dict().values(),
                                  single.fusion_head.head.state_dict().values()):
            torch.testing.assert_close(trained, alone)


def test_no_warm_start_checkpoints_are_chosen_from_the_first_epoch_on():
    messages: list[str] = []
    data = _batches(n=1)
    MultimodalTrainer(_model(("mri", "clinical")), _config(epochs=2), data, data, progress=False,
                      log=messages.append, device="cpu").train()
    epochs = [m for m in messages if m.startswith("epoch ")]
    assert len(epochs) == 2 and "*best*" in epochs[0]
    assert not any("warm start" in m for m in epochs)
    assert any("warm_start_epochs and training.loss.auxiliary_weight do not apply" in m for m in messages)


@pytest.mark.parametrize("name", list_entries("late*"))
def test_late_entries_are_heads_only_products(name):
    entry = get_entry(name)
    assert entry.fusion == "late" and len(entry.modalities) >= 2
    config = entry.config("cpu")
    assert config["model"]["fusion"]["type"] == "late" and config["model"]["fusion"]["late_rule"] == "product"
    # the recipe's fusion-training keys are reset, so the saved config.yaml says what training does
    for recipe in entry.recipes:
        resolved = entry.config(recipe)
        assert resolved["training"]["warm_start_epochs"] == 0
        assert resolved["training"]["loss"]["auxiliary_weight"] == 0.0
        assert resolved["model"]["fusion"]["late_residual"] is False
    assert entry.config("cpu", ["training.warm_start_epochs=3"])["training"]["warm_start_epochs"] == 3
    model = entry.build_model("tiny")
    assert model.heads_only and len(model.fusion_head.unimodal_heads) == len(entry.modalities)
