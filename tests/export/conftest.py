"""Shared fixtures for export tests: tiny checkpoints in the trainer's format, one per registry entry."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from export.parts import ParitySizes

# Smaller MRI volumes than the tiny recipe keep the 24-entry parametrisation inside the test budget.
TEST_OVERRIDES = ("data.modalities.mri.output_shape=[8,8,4]",)
# Bag sizes 1 and 3000 through mil_pool; small patch counts through the (CPU) patch encoder.
TEST_SIZES = ParitySizes(patches=(1, 4), bag=(1, 3000), batch=(1, 2))


def clinical_preprocessor(features) -> dict:
    import pandas as pd

    from zoo.data.clinical import ClinicalPreprocessor

    table = pd.DataFrame({f: [float(i), float(i) * 2 + 1, None] for i, f in enumerate(features)})
    return ClinicalPreprocessor(features).fit(table).to_dict()


def write_tiny_checkpoint(name: str, path: Path, seed: int = 0, version: str | None = None,
                          overrides: tuple[str, ...] = ()) -> Path:
    """A checkpoint of `name` under the tiny recipe, in the format zoo.training.trainer writes (zoo.checkpoint)."""
    from zoo.checkpoint import checkpoint_payload, preprocessing_record, save_checkpoint
    from zoo.registry import get_entry

    entry = get_entry(name)
    overrides = [*TEST_OVERRIDES, *overrides]
    config = entry.config("tiny", overrides)
    torch.manual_seed(seed)
    model = entry.build_model("tiny", overrides)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval-mode graphs are not identity-normalised
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
        if getattr(model.fusion_head, "late_residual", False):  # a trained fused term is not the initial zero
            model.fusion_head.head.net[-1].weight.normal_()
        score = getattr(getattr(model.fusion_head, "fusion", None), "score", None)
        if score is not None:  # trained attention weights are not the initial near-uniform ones
            score[-1].weight.normal_()
        if model.mil is not None:  # fitted input standardisation, as a feature-cache run leaves it
            d = model.mil.in_dim
            model.mil.set_input_standardization(torch.rand(d) - 0.5, torch.rand(d) + 0.5)
    preprocessing = preprocessing_record(config, model, clinical=clinical_preprocessor(entry.clinical_features))
    return save_checkpoint(path, checkpoint_payload(entry, config, model, preprocessing, version=version))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny graphs gain nothing from a second thread, and spin-waiting threads crawl on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def sizes() -> ParitySizes:
    return TEST_SIZES


@pytest.fixture(scope="session")
def checkpoint_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("outputs")


@pytest.fixture(scope="session")
def tiny_checkpoint(checkpoint_root):
    """Factory: entry name -> outputs/<entry>/best.pt (written once per session)."""
    def make(name: str) -> Path:
        path = checkpoint_root / name / "best.pt"
        if not path.exists():
            write_tiny_checkpoint(name, path)
        return path

    return make
