"""Synthetic batches for model tests (random uint8 patches, volumes, clinical vectors)."""
from __future__ import annotations

import pytest

# The project is not installed as a package: make the repository root importable.
import torch

from zoo import spec

torch.set_num_threads(2)


def make_batch(config: dict, batch_size: int = 3, bag_sizes=(5, 3, 1), seed: int = 0, mri_shape=(16, 16, 8)) -> dict:
    """A collated batch for `config` (resolved): every modality of spec.MODALITIES is filled, bags padded.
    MRI volumes are smaller than the recipe's output_shape by default (the encoder pools globally) to save time."""
    g = torch.Generator().manual_seed(seed)
    data = config["data"]["modalities"]
    n = max(bag_sizes)
    patch = data["pathology"]["patch_size"]
    mask = torch.zeros(batch_size, n, dtype=torch.bool)
    for i, size in enumerate(bag_sizes[:batch_size]):
        mask[i, :size] = True
    return {
        spec.KEY_PATHOLOGY: torch.randint(0, 256, (batch_size, n, 3, patch, patch), dtype=torch.uint8, generator=g),
        spec.KEY_PATHOLOGY_MASK: mask,
        spec.KEY_MRI: torch.randn(batch_size, len(data["mri"]["sequences"]), *mri_shape, generator=g),
        spec.KEY_CLINICAL: torch.randn(batch_size, 2 * len(data["clinical"]["features"]), generator=g),
        spec.KEY_PRESENCE: torch.ones(batch_size, len(spec.MODALITIES), dtype=torch.bool),
        spec.KEY_LABEL: torch.randint(0, spec.NUM_CLASSES, (batch_size,), generator=g),
    }


@pytest.fixture
def batch_factory():
    return make_batch
