"""Multiple-instance pooling: features [B,N,D] + mask [B,N] (True = real patch) -> (embedding [B,E], attention [B,N]).

Every aggregator projects patches to `hidden_dim`, ignores masked (padding) entries entirely -- they get exactly
zero attention and their values (even NaN) never reach the output -- and is invariant to patch order.
A bag with no valid patch yields a zero embedding and zero attention.

Input standardisation: frozen encoders (random weights above all) give features whose per-dimension offsets dwarf
their variation, which a small MIL head barely learns from. Every aggregator therefore z-scores its input with
`input_mean` / `input_std` buffers -- identity until `set_input_standardization` fits them (on the training
split's cached features) -- so the statistics travel with the weights into checkpoints and the exported
`mil_pool` graph.
"""
from __future__ import annotations

import torch
from torch import nn

from zoo.lookup import lookup
from zoo.models.masking import masked_softmax


class MILPool(nn.Module):
    def __init__(self, in_dim: int, hidden_dim: int = 256, dropout: float = 0.25):
        super().__init__()
        self.project = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.in_dim = in_dim
        self.out_dim = hidden_dim
        self.register_buffer("input_mean", torch.zeros(in_dim))
        self.register_buffer("input_std", torch.ones(in_dim))

    @torch.no_grad()
    def set_input_standardization(self, mean, std, min_std: float = 1e-6) -> None:
        """Fit the input z-scoring: `mean`, `std` of shape [in_dim] (std below `min_std` is raised to it)."""
        mean = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std = torch.as_tensor(std, dtype=torch.float32).flatten()
        if mean.numel() != self.in_dim or std.numel() != self.in_dim:
            raise ValueError(f"standardisation statistics must have {self.in_dim} values (the feature dimension), "
                             f"got mean {mean.numel()} and std {std.numel()}")
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all()):
            raise ValueError("standardisation statistics contain NaN or inf; are the cached features valid?")
        self.input_mean.copy_(mean)
        self.input_std.copy_(std.clamp_min(min_std))

    def _instances(self, features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = mask.bool()
        valid = mask.unsqueeze(-1)
        features = (features.float() - self.input_mean) / self.input_std
        features = torch.where(valid, features, torch.zeros_like(features))
        hidden = self.project(features)
        return torch.where(valid, hidden, torch.zeros_like(hidden)), mask

    def attention(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, mask = self._instances(features, mask)
        attention = self.attention(hidden, mask)
        return torch.einsum("bn,bnd->bd", attention, hidden), attention


class GatedAttentionMIL(MILPool):
    """Gated attention-MIL (Ilse et al., 2018): a_n = softmax_n(w^T (tanh(V h_n) * sigmoid(U h_n)))."""

    def __init__(self, in_dim: int, hidden_dim: int = 256, dropout: float = 0.25):
        super().__init__(in_dim, hidden_dim, dropout)
        attn_dim = max(hidden_dim // 2, 8)
        self.attn_v = nn.Sequential(nn.Linear(hidden_dim, attn_dim), nn.Tanh(), nn.Dropout(dropout))
        self.attn_u = nn.Sequential(nn.Linear(hidden_dim, attn_dim), nn.Sigmoid(), nn.Dropout(dropout))
        self.attn_w = nn.Linear(attn_dim, 1)

    def attention(self, hidden, mask):
        scores = self.attn_w(self.attn_v(hidden) * self.attn_u(hidden)).squeeze(-1)
        return masked_softmax(scores, mask)


class MeanMIL(MILPool):
    """Mean over valid patches; attention = uniform over them."""

    def attention(self, hidden, mask):
        return masked_softmax(torch.zeros_like(hidden[..., 0]), mask)


class MaxMIL(MILPool):
    """Feature-wise max over valid patches; attention[n] = share of feature dims whose max patch n holds."""

    def forward(self, features, mask):
        hidden, mask = self._instances(features, mask)
        lowest = torch.finfo(hidden.dtype).min
        filled = torch.where(mask.unsqueeze(-1), hidden, torch.full_like(hidden, lowest))
        top = filled.max(dim=1, keepdim=True).values
        any_valid = mask.any(dim=1, keepdim=True)
        embedding = torch.where(any_valid, top.squeeze(1), torch.zeros_like(top.squeeze(1)))
        holds_max = ((filled == top) & mask.unsqueeze(-1)).float().sum(-1)
        attention = holds_max / holds_max.sum(dim=1, keepdim=True).clamp_min(1.0)
        return embedding, attention


AGGREGATORS = {"attention_mil": GatedAttentionMIL, "mean": MeanMIL, "max": MaxMIL}


def build_mil(in_dim: int, type: str = "attention_mil", hidden_dim: int = 256, dropout: float = 0.25) -> MILPool:
    return lookup(AGGREGATORS, type, "MIL aggregator")(in_dim, int(hidden_dim), float(dropout))
