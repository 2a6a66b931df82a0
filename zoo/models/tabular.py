"""Clinical encoder: features [B,F] -> embeddings [B,hidden_dims[-1]]."""
from __future__ import annotations

from torch import nn

from zoo.lookup import lookup
from zoo.models.weights import resolve_pretrained


class MLPEncoder(nn.Module):
    def __init__(self, input_dim: int, hidden_dims: list[int] | tuple[int, ...] = (64, 128, 256), dropout: float = 0.1):
        super().__init__()
        if int(input_dim) < 1 or not hidden_dims:
            raise ValueError(f"clinical mlp needs input_dim >= 1 and at least one hidden dim, "
                             f"got {input_dim}, {hidden_dims}")
        layers, cin = [], int(input_dim)
        for width in hidden_dims:
            layers += [nn.Linear(cin, int(width)), nn.LayerNorm(int(width)), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            cin = int(width)
        self.net = nn.Sequential(*layers)
        self.input_dim = int(input_dim)
        self.out_dim = cin

    def forward(self, x):
        return self.net(x.float())


TABULAR_BACKBONES = {"mlp": MLPEncoder}


def build_tabular_encoder(backbone: str = "mlp", input_dim: int = 12, hidden_dims=(64, 128, 256), dropout: float = 0.1,
                          pretrained: bool | str = False) -> MLPEncoder:
    encoder = lookup(TABULAR_BACKBONES, backbone, "clinical backbone")(input_dim, hidden_dims, dropout)
    resolve_pretrained(encoder, pretrained, backbone, hub_url=None)
    return encoder
