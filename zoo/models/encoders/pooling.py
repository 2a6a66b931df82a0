"""Parameter-free heads turning a trunk's output into one embedding per patch."""
from __future__ import annotations

import torch
from torch import nn


class Flatten(nn.Module):
    """CNN trunks: [N,D,1,1] or [N,D] -> [N,D]; timm ViTs with global_pool='token' already give [N,D]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


class ClsMeanPool(nn.Module):
    """Tokens [N,T,D] -> CLS concatenated with the mean of the patch tokens [N,2D], skipping the CLS and register
    tokens (Virchow/Virchow2's output)."""

    def __init__(self, num_prefix_tokens: int):
        super().__init__()
        self.num_prefix_tokens = int(num_prefix_tokens)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.cat([tokens[:, 0], tokens[:, self.num_prefix_tokens:].mean(dim=1)], dim=-1)

    def extra_repr(self) -> str:
        return f"num_prefix_tokens={self.num_prefix_tokens}"
