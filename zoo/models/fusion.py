"""Fusion of per-modality embeddings under a presence mask.

Every strategy takes `embeddings` (list of [B,E_m], in model.modalities order) and `presence` [B,M] bool and
returns (fused [B,out_dim], fusion_attention [B,M]). A missing modality contributes nothing: attention over
modalities is masked, and where a strategy needs a value for a missing slot it uses a learned, input-independent
"missing" token (or zeros for bilinear), so one model serves any subset of its modalities.

fusion_attention by strategy:
- attention: softmax weights over present modalities (sum to 1); they scale each modality's token before the
  tokens are concatenated (model.fusion.attention_combine "concat", the default), pool the tokens into one that is
  appended to the unweighted concatenation ("concat_pool") or sum them ("sum", before 1.5);
- cross_attention: attention each modality receives, averaged over heads and present queries (sums to 1);
- gated: the sigmoid gates themselves (each in [0,1], 0 when missing; they do not sum to 1; with nothing
  present, the gates of the learned missing tokens);
- concatenate, bilinear: presence-normalised uniform weights (1/#present on present modalities);
- identity (single modality): 1;
- late (no fused term: the per-modality heads' predictions combined by model.fusion.late_rule, see FusionHead):
  presence-normalised uniform weights.
A row with no modality present gets uniform weights (gated: its gates) and a finite, constant (learned prior)
output.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from zoo.lookup import lookup
from zoo.models.masking import masked_softmax, presence_weights
from zoo.spec import LATE_FUSION_TYPE


class ProjectedModalities(nn.Module):
    """Projects each modality to `hidden_dim`; missing slots get a learned token."""

    def __init__(self, dims: list[int], hidden_dim: int, dropout: float):
        super().__init__()
        self.projections = nn.ModuleList(
            nn.Sequential(nn.Linear(d, hidden_dim), nn.LayerNorm(hidden_dim), nn.ReLU(inplace=True),
                          nn.Dropout(dropout))
            for d in dims
        )
        self.missing_tokens = nn.Parameter(torch.zeros(len(dims), hidden_dim))
        nn.init.normal_(self.missing_tokens, std=0.02)

    def forward(self, embeddings: list[torch.Tensor], presence: torch.Tensor) -> torch.Tensor:
        tokens = torch.stack([proj(e.float()) for proj, e in zip(self.projections, embeddings)], dim=1)  # [B,M,H]
        missing = self.missing_tokens.unsqueeze(0).expand_as(tokens)
        return torch.where(presence.bool().unsqueeze(-1), tokens, missing)


def concatenated_mix(num_modalities: int, hidden_dim: int) -> nn.Sequential:
    """The layer that mixes the concatenated modality tokens [B, M*H] down to [B, H]."""
    return nn.Sequential(nn.Linear(num_modalities * hidden_dim, hidden_dim), nn.ReLU(inplace=True))


class Fusion(nn.Module):
    def __init__(self, dims: list[int], hidden_dim: int, num_heads: int = 8, dropout: float = 0.1):
        super().__init__()
        self.num_modalities = len(dims)
        self.out_dim = hidden_dim


class ConcatenateFusion(Fusion):
    def __init__(self, dims, hidden_dim, num_heads=8, dropout=0.1):
        super().__init__(dims, hidden_dim, num_heads, dropout)
        self.tokens = ProjectedModalities(dims, hidden_dim, dropout)
        self.mix = concatenated_mix(len(dims), hidden_dim)

    def forward(self, embeddings, presence):
        tokens = self.tokens(embeddings, presence)
        return self.mix(tokens.flatten(1)), presence_weights(presence)


class GatedFusion(Fusion):
    """Gated multimodal unit: g_m = sigmoid(W_m [z_1..z_M]); fused = sum_m g_m * presence_m * z_m."""

    def __init__(self, dims, hidden_dim, num_heads=8, dropout=0.1):
        super().__init__(dims, hidden_dim, num_heads, dropout)
        self.tokens = ProjectedModalities(dims, hidden_dim, dropout)
        self.gates = nn.Linear(len(dims) * hidden_dim, len(dims))

    def forward(self, embeddings, presence):
        tokens = self.tokens(embeddings, presence)
        # A row with nothing present gates its learned missing tokens instead: a finite, constant prior.
        nothing = ~presence.bool().any(dim=1, keepdim=True)
        gates = torch.sigmoid(self.gates(tokens.flatten(1))) * (presence.bool() | nothing).float()
        return torch.einsum("bm,bmh->bh", gates, tokens), gates


ATTENTION_COMBINES = ("concat", "concat_pool", "sum")


def check_attention_combine(combine: str) -> str:
    if combine not in ATTENTION_COMBINES:
        raise ValueError(f"model.fusion.attention_combine={combine!r}; choose one of {', '.join(ATTENTION_COMBINES)}")
    return combine


class AttentionFusion(Fusion):
    """Softmax attention over present modalities: a_m = softmax_m(w^T tanh(V z_m)).

    combine "concat" (entry version 1.5): each present token scaled by (#present * a_m), the tokens concatenated
    (a missing slot keeps its learned token) and mixed as in concatenate fusion. The score's last layer starts near
    zero, so the weights start near uniform and the model starts as (nearly) concatenate fusion: attention learns
    per-patient modality weights on top of it; with uniform weights it is concatenate fusion exactly.
    combine "concat_pool": the tokens concatenated unweighted, with their weighted sum sum_m a_m z_m appended, and
    mixed; the pooled token's slice of the mixing layer starts at 0, so the model starts as concatenate fusion
    exactly, and the weights can add a per-patient summary but never scale a modality's own token down (with
    "concat", the weights learned on the 500-patient cohort moved from fold to fold and shrank pathology's token:
    docs/results/README.md).
    combine "sum" (before 1.5): fused = sum_m a_m z_m, which averages the modalities' tokens into one
    (docs/results/README.md measured it behind concatenate)."""

    def __init__(self, dims, hidden_dim, num_heads=8, dropout=0.1, combine: str = "concat"):
        super().__init__(dims, hidden_dim, num_heads, dropout)
        self.combine = check_attention_combine(combine)
        self.tokens = ProjectedModalities(dims, hidden_dim, dropout)
        self.score = nn.Sequential(nn.Linear(hidden_dim, hidden_dim // 2 or 1), nn.Tanh(),
                                   nn.Linear(hidden_dim // 2 or 1, 1))
        if combine != "sum":
            # near-uniform weights at the start (not exactly: a zero layer would stop the score's first layer
            # from learning until it moved); AdamW's step size does not depend on the gradient's scale
            nn.init.normal_(self.score[-1].weight, std=0.01)
            nn.init.zeros_(self.score[-1].bias)
            pooled = int(combine == "concat_pool")
            self.mix = concatenated_mix(len(dims) + pooled, hidden_dim)
            if pooled:
                nn.init.zeros_(self.mix[0].weight[:, len(dims) * hidden_dim:])

    def forward(self, embeddings, presence):
        tokens = self.tokens(embeddings, presence)
        weights = masked_softmax(self.score(tokens).squeeze(-1), presence, empty_uniform=True)
        if self.combine != "concat":
            pooled = torch.einsum("bm,bmh->bh", weights, tokens)
            if self.combine == "sum":
                return pooled, weights
            return self.mix(torch.cat([tokens.flatten(1), pooled], dim=1)), weights
        present = presence.bool()
        count = present.sum(dim=1, keepdim=True).float()
        scale = torch.where(present, weights * count, torch.ones_like(weights))
        return self.mix((tokens * scale.unsqueeze(-1)).flatten(1)), weights


class CrossAttentionFusion(Fusion):
    """One token per modality; a transformer layer where every token attends to the present ones."""

    def __init__(self, dims, hidden_dim, num_heads=8, dropout=0.1):
        super().__init__(dims, hidden_dim, num_heads, dropout)
        if hidden_dim % num_heads:
            raise ValueError(f"fusion hidden_dim ({hidden_dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.tokens = ProjectedModalities(dims, hidden_dim, dropout)
        self.modality_embedding = nn.Parameter(torch.zeros(len(dims), hidden_dim))
        nn.init.normal_(self.modality_embedding, std=0.02)
        self.qkv = nn.Linear(hidden_dim, 3 * hidden_dim)
        self.out = nn.Linear(hidden_dim, hidden_dim)
        self.norm1 = nn.LayerNorm(hidden_dim)
        self.ffn = nn.Sequential(nn.Linear(hidden_dim, 2 * hidden_dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(2 * hidden_dim, hidden_dim))
        self.norm2 = nn.LayerNorm(hidden_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, embeddings, presence):
        tokens = self.tokens(embeddings, presence) + self.modality_embedding
        b, m, h = tokens.shape
        q, k, v = self.qkv(tokens).view(b, m, 3, self.num_heads, h // self.num_heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(h // self.num_heads)  # [B,heads,M,M]
        key_mask = presence.bool()[:, None, None, :].expand_as(scores)
        attn = masked_softmax(scores, key_mask, empty_uniform=True)
        mixed = (attn @ v).transpose(1, 2).reshape(b, m, h)
        tokens = self.norm1(tokens + self.dropout(self.out(mixed)))
        tokens = self.norm2(tokens + self.dropout(self.ffn(tokens)))
        query_weights = presence_weights(presence)  # pool over present tokens
        fused = torch.einsum("bm,bmh->bh", query_weights, tokens)
        received = torch.einsum("bq,bqk->bk", query_weights, attn.mean(dim=1))
        return fused, received


class BilinearFusion(Fusion):
    """PathomicFusion-style gated Kronecker fusion.

    Each modality is projected to a small dim d, gated by a sigmoid computed from all modalities, extended with a
    constant 1 and combined by an outer product, so the product keeps every uni-, bi- and tri-modal term. A missing
    modality's vector is zero, leaving only the terms of the present ones. d is chosen so that (d+1)^M <= 4096
    (d = 15 for 3 modalities, 32 for 2), which keeps the mixing layer small.
    """

    def __init__(self, dims, hidden_dim, num_heads=8, dropout=0.1):
        super().__init__(dims, hidden_dim, num_heads, dropout)
        m = len(dims)
        self.rank_dim = max(2, min(32, hidden_dim, int(round(4096 ** (1.0 / m))) - 1))
        self.tokens = ProjectedModalities(dims, hidden_dim, dropout)
        self.reduce = nn.ModuleList(nn.Sequential(nn.Linear(hidden_dim, self.rank_dim),
                                                  nn.ReLU(inplace=True)) for _ in dims)
        self.gates = nn.Linear(m * hidden_dim, m * self.rank_dim)
        self.mix = nn.Sequential(nn.Dropout(dropout), nn.Linear((self.rank_dim + 1) ** m, hidden_dim),
                                 nn.ReLU(inplace=True))

    def forward(self, embeddings, presence):
        tokens = self.tokens(embeddings, presence)
        b, m, _ = tokens.shape
        gates = torch.sigmoid(self.gates(tokens.flatten(1))).view(b, m, self.rank_dim)
        present = presence.float().unsqueeze(-1)
        ones = torch.ones_like(tokens[:, 0, :1])
        product = ones
        for i, reduce in enumerate(self.reduce):
            vec = torch.cat([reduce(tokens[:, i]) * gates[:, i] * present[:, i], ones], dim=1)  # [B,d+1]
            product = (product.unsqueeze(-1) * vec.unsqueeze(1)).flatten(1)
        return self.mix(product), presence_weights(presence)


class IdentityFusion(Fusion):
    """Single modality: the embedding itself (zeros when it is missing)."""

    def __init__(self, dims, hidden_dim=0, num_heads=8, dropout=0.1):
        super().__init__(dims, hidden_dim, num_heads, dropout)
        if len(dims) != 1:
            raise ValueError(f"identity fusion takes exactly one modality, got {len(dims)}")
        self.out_dim = dims[0]

    def forward(self, embeddings, presence):
        present = presence.bool()[:, :1]
        return torch.where(present, embeddings[0].float(), torch.zeros_like(embeddings[0], dtype=torch.float32)), \
            presence_weights(presence)


FUSIONS = {
    "concatenate": ConcatenateFusion,
    "gated": GatedFusion,
    "attention": AttentionFusion,
    "cross_attention": CrossAttentionFusion,
    "bilinear": BilinearFusion,
    "identity": IdentityFusion,
}


def drop_modalities(presence: torch.Tensor, p: float) -> torch.Tensor:
    """Drop each present modality with probability p, never all present ones of a sample."""
    presence = presence.bool()
    keep = (torch.rand(presence.shape, device=presence.device) >= p) & presence
    # Rows that lost everything keep one present modality chosen at random.
    rescue = torch.rand(presence.shape, device=presence.device).masked_fill(~presence, -1.0).argmax(dim=1)
    one = nn.functional.one_hot(rescue, presence.shape[1]).bool() & presence
    lost_all = ~keep.any(dim=1, keepdim=True)
    return torch.where(lost_all, one, keep)


class ClassificationHead(nn.Module):
    def __init__(self, in_dim: int, num_classes: int, dropout: float = 0.5):
        super().__init__()
        self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, num_classes))

    def zero_init(self) -> None:
        """Output 0 for every input until trained (the fused term of a late-residual head starts silent)."""
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x):
        return self.net(x)


HEADS = {"classification": ClassificationHead}


LATE_RULES = ("mean", "product")


def late_fusion_logits(unimodal: list[torch.Tensor], presence: torch.Tensor, rule: str = "mean") -> torch.Tensor:
    """The present modalities' logits [B,K] combined: their mean ("mean"), or the sum of their log-probabilities
    ("product": softmax of it is the renormalised product of the heads' probabilities, the Bayes posterior for
    modalities independent given the class). 0 for a row with nothing present."""
    present = presence.float()
    stacked = torch.stack(unimodal, dim=1)
    if rule == "product":
        return torch.einsum("bm,bmk->bk", present, torch.log_softmax(stacked.float(), dim=-1))
    total = torch.einsum("bm,bmk->bk", present, stacked)
    return total / present.sum(dim=1, keepdim=True).clamp_min(1.0)


class FusionHead(nn.Module):
    """(embeddings in model.modalities order, presence [B,M]) -> (logits [B,K], fusion_attention [B,M]).

    `auxiliary_heads` (two or more modalities): a linear classifier per modality on its own embedding
    (`unimodal_logits`), trained by its own loss term (training.loss.auxiliary_weight) so every encoder keeps
    learning where the fused classifier relies on the strongest modality. By default they are training-only.
    `late_residual`: the served logits are the present modalities' unimodal logits combined by `late_rule` (late
    fusion: "mean" of the logits, or "product", the sum of their log-probabilities) plus the strategy's fused term,
    whose classifier starts at zero: the model begins as late fusion and the fusion strategy learns only what the
    modalities add together. Fusion attention still comes from the strategy.
    fusion type `late` (`heads_only`): no fused term at all. Each modality has a classifier head like a
    single-modality entry's (dropout + linear), and the served logits are their combination by `late_rule`; with
    "product" and each head trained on its own loss (zoo.training.trainer), this is the product of experts of the
    single-modality models, trained and served as one model."""

    def __init__(self, dims: list[int], num_classes: int, fusion_type: str = "attention", hidden_dim: int = 512,
                 num_heads: int = 8, dropout: float = 0.1, modality_dropout: float = 0.0,
                 head_type: str = "classification", head_dropout: float = 0.5, auxiliary_heads: bool = False,
                 late_residual: bool = False, late_rule: str = "mean", attention_combine: str = "concat"):
        super().__init__()
        if late_residual and not auxiliary_heads:
            raise ValueError("fusion late_residual needs auxiliary_heads: true (the late term is their logits)")
        if late_rule not in LATE_RULES:
            raise ValueError(f"model.fusion.late_rule={late_rule!r}; choose one of {', '.join(LATE_RULES)}")
        check_attention_combine(attention_combine)  # for every strategy: a typo is refused anywhere
        self.late_rule = late_rule
        if len(dims) == 1:
            fusion_type = "identity"
        elif fusion_type == LATE_FUSION_TYPE:
            self._init_heads_only(dims, num_classes, late_rule, head_type, head_dropout)
            return
        elif fusion_type == "identity":
            raise ValueError(f"fusion type 'identity' needs exactly one modality, got {len(dims)}")
        if not 0.0 <= modality_dropout < 1.0:
            raise ValueError(f"fusion modality_dropout must be in [0, 1), got {modality_dropout}")
        self.fusion_type = fusion_type
        fusion_class = lookup(FUSIONS, fusion_type, "fusion type")
        options = {"combine": str(attention_combine)} if fusion_type == "attention" else {}
        self.fusion = fusion_class(list(dims), int(hidden_dim), int(num_heads), float(dropout), **options)
        self.head = lookup(HEADS, head_type, "head type")(self.fusion.out_dim, int(num_classes), float(head_dropout))
        self.modality_dropout = float(modality_dropout)
        self.unimodal_heads = (nn.ModuleList(nn.Linear(d, int(num_classes)) for d in dims)
                               if auxiliary_heads and len(dims) > 1 else None)
        self.late_residual = bool(late_residual) and self.unimodal_heads is not None
        self.heads_only = False
        if self.late_residual:
            self.head.zero_init()

    def _init_heads_only(self, dims, num_classes, late_rule, head_type, head_dropout) -> None:
        self.fusion_type = LATE_FUSION_TYPE
        self.fusion = self.head = None
        self.modality_dropout = 0.0  # nothing fused to regularise: each head sees its own modality only
        head_class = lookup(HEADS, head_type, "head type")
        self.unimodal_heads = nn.ModuleList(head_class(d, int(num_classes), float(head_dropout)) for d in dims)
        self.late_residual = False
        self.heads_only = True

    def unimodal_logits(self, embeddings: list[torch.Tensor]) -> list[torch.Tensor]:
        return [head(e.float()) for head, e in zip(self.unimodal_heads, embeddings)]

    def forward(self, embeddings: list[torch.Tensor], presence: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        presence = presence.bool()
        if self.heads_only:
            return late_fusion_logits(self.unimodal_logits(embeddings), presence, self.late_rule), \
                presence_weights(presence)
        if self.training and self.modality_dropout > 0:
            presence = drop_modalities(presence, self.modality_dropout)
        fused, weights = self.fusion(embeddings, presence)
        logits = self.head(fused)
        if self.late_residual:
            logits = logits + late_fusion_logits(self.unimodal_logits(embeddings), presence, self.late_rule)
        return logits, weights
