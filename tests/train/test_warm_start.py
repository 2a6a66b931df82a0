"""Unimodal warm start (training.warm_start_epochs): encoders learn on their own heads first, the fused head after."""
from __future__ import annotations

import pytest
import torch

from zoo import spec
from zoo.models.builder import MultiModalModelBuilder
from zoo.training.trainer import MultimodalTrainer


def _model(auxiliary_heads: bool = True):
    torch.manual_seed(0)
    builder = MultiModalModelBuilder(num_classes=4)
    builder.add_modality("mri", "resnet3d_tiny", input_channels=1, width=4, statistics=True, norm="group",
                         cnn_gate=True)
    builder.add_modality("clinical", "mlp", input_dim=12, hidden_dims=[8])
    return builder.set_fusion("concatenate", hidden_dim=8, auxiliary_heads=auxiliary_heads).build()


def _batches(n: int = 3, size: int = 8):
    g = torch.Generator().manual_seed(1)
    return [{spec.KEY_MRI: torch.randn(size, 1, 8, 8, 4, generator=g),
             spec.KEY_CLINICAL: torch.randn(size, 12, generator=g),
             spec.KEY_LABEL: torch.randint(0, 4, (size,), generator=g)} for _ in range(n)]


def _config(epochs: int, warm: int) -> dict:
    return {"training": {"epochs": epochs, "warm_start_epochs": warm, "optimizer": {"lr": 0.01},
                         "loss": {"auxiliary_weight": 0.5}}}


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(before[k], v) for k, v in module.state_dict().items())


def test_warm_start_trains_encoders_alone_then_fusion():
    model = _model()
    fused = torch.nn.ModuleList([model.fusion_head.fusion, model.fusion_head.head])  # not the unimodal heads
    fusion0, clinical0 = _snapshot(fused), _snapshot(model.clinical_encoder)
    gate0 = model.mri_encoder.cnn_gate.item()
    changes = []

    def record(epoch, _row):
        changes.append((epoch, _changed(fusion0, fused), _changed(clinical0, model.clinical_encoder)))

    data = _batches()
    result = MultimodalTrainer(model, _config(epochs=3, warm=2), data, data[:1], progress=False,
                               log=lambda _m: None, on_epoch_end=record, device="cpu").train()
    # warm epochs: the encoders (and the MRI gate) learn, the fused head is untouched; then it trains too
    assert changes == [(0, False, True), (1, False, True), (2, True, True)]
    assert model.mri_encoder.cnn_gate.item() != gate0
    # no checkpoint is chosen among warm-start epochs: their fused predictions come from an untrained head
    assert result["best_epoch"] == 2 and result["epochs_run"] == 3


def test_warm_start_is_a_noop_without_unimodal_heads():
    model = _model(auxiliary_heads=False)
    fusion0 = _snapshot(model.fusion_head)
    data = _batches(n=1)
    changed, messages = [], []
    trainer = MultimodalTrainer(model, _config(epochs=2, warm=1), data, data, progress=False, log=messages.append,
                                on_epoch_end=lambda _e, _r: changed.append(_changed(fusion0, model.fusion_head)),
                                device="cpu")
    trainer.train()
    # the fused head trains from epoch 0 and no epoch is logged as a warm-start one
    assert trainer.warm_start_epochs == 0 and changed[0]
    epochs = [m for m in messages if m.startswith("epoch ")]
    assert len(epochs) == 2 and not any("warm start" in m for m in epochs)


def test_warm_start_must_leave_epochs_for_fusion():
    data = _batches(n=1)
    with pytest.raises(ValueError, match="warm_start_epochs=3 must be >= 0 and below training.epochs=3"):
        MultimodalTrainer(_model(), _config(epochs=3, warm=3), data, data, progress=False, device="cpu")


def test_cnn_gate_needs_statistics_and_norm_is_checked():
    from zoo.models.volume_encoders import build_volume_encoder

    with pytest.raises(ValueError, match="cnn_gate needs statistics"):
        build_volume_encoder("resnet3d_tiny", 1, width=4, cnn_gate=True)
    with pytest.raises(ValueError, match="unknown mri norm 'layer'"):
        build_volume_encoder("resnet3d_tiny", 1, width=4, norm="layer")
    encoder = build_volume_encoder("resnet3d_tiny", 1, width=4, statistics=True, norm="group", cnn_gate=True)
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in encoder.modules())
    out = encoder(torch.randn(2, 1, 8, 8, 4))
    cnn_dim = encoder.out_dim - encoder.statistics.out_dim
    assert torch.count_nonzero(out[:, :cnn_dim]) == 0  # a 0 gate: the embedding starts as the statistics alone
    assert torch.count_nonzero(out[:, cnn_dim:]) > 0
