"""Tensor signatures of exported parts: name, dtype and shape (dynamic axes as named symbols).

A signature is what the manifest records and what the parity checker and the export verification compare
against the real graph, so one definition serves all three.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch

Dim = int | str  # int = fixed size, str = dynamic axis symbol

TORCH_DTYPES: dict[str, torch.dtype] = {
    "uint8": torch.uint8,
    "bool": torch.bool,
    "float32": torch.float32,
    "float16": torch.float16,
    "int64": torch.int64,
}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[Dim, ...]

    def __post_init__(self) -> None:
        if self.dtype not in TORCH_DTYPES:
            raise ValueError(f"tensor {self.name!r}: dtype {self.dtype!r} not one of {sorted(TORCH_DTYPES)}")

    @property
    def dynamic_axes(self) -> dict[int, str]:
        return {axis: dim for axis, dim in enumerate(self.shape) if isinstance(dim, str)}

    def concrete_shape(self, sizes: Mapping[str, int]) -> tuple[int, ...]:
        """Shape with every dynamic symbol replaced by `sizes[symbol]`."""
        try:
            return tuple(sizes[d] if isinstance(d, str) else d for d in self.shape)
        except KeyError as exc:
            raise KeyError(f"tensor {self.name!r} needs a size for dynamic axis {exc.args[0]!r}") from None

    def accepts(self, array: np.ndarray) -> bool:
        if str(array.dtype) != self.dtype or array.ndim != len(self.shape):
            return False
        return all(isinstance(d, str) or d == n for d, n in zip(self.shape, array.shape))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "TensorSpec":
        return cls(name=str(obj["name"]), dtype=str(obj["dtype"]), shape=tuple(obj["shape"]))


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    @property
    def symbols(self) -> list[str]:
        seen: dict[str, None] = {}
        for t in (*self.inputs, *self.outputs):
            seen.update(dict.fromkeys(t.dynamic_axes.values()))
        return list(seen)

    def to_json(self) -> dict[str, Any]:
        return {"inputs": [t.to_json() for t in self.inputs], "outputs": [t.to_json() for t in self.outputs]}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "Signature":
        return cls(
            inputs=tuple(TensorSpec.from_json(t) for t in obj["inputs"]),
            outputs=tuple(TensorSpec.from_json(t) for t in obj["outputs"]),
        )
