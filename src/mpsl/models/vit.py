"""A pre-norm ViT block in timm's parameter layout, the one block every ViT-family checkpoint maps onto.

    x = x + proj(attn(norm1(x)))        fused qkv, scaled_dot_product_attention
    x = x + fc2(act(fc1(norm2(x))))

timm (Meta-Transformer), open_clip, Hugging Face ViT / CLIP / AST checkpoints all compute this;
they differ only in key names, in whether q, k, v are fused, and in the activation (CLIP models
trained by OpenAI use QuickGELU).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mpsl.registry import Registry


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


ACTIVATIONS: Registry[type[nn.Module]] = Registry("activation", config_keys=("model.encoder.act",))
ACTIVATIONS.register("gelu")(nn.GELU)
ACTIVATIONS.register("quick_gelu")(QuickGELU)


class Attention(nn.Module):
    def __init__(self, width: int, heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width, bias=qkv_bias)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads)  # [B, T, 3, H, D/H]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x [B, H, T, D/H]
        out = F.scaled_dot_product_attention(q, k, v)  # [B, H, T, D/H]
        return self.proj(out.transpose(1, 2).reshape(b, t, d))  # [B, T, H, D/H] -> [B, T, D]


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int, act: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = ACTIVATIONS.get(act)()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ViTBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, act: str = "gelu", eps: float = 1e-6,
                 qkv_bias: bool = True) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=eps)
        self.attn = Attention(width, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(width, eps=eps)
        self.mlp = Mlp(width, int(width * mlp_ratio), act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))  # [B, T, D]
        return x + self.mlp(self.norm2(x))  # [B, T, D]
