"""FedCLIP-style attention adapters: a small gate over the pooled features of a frozen encoder.

    a = softmax(W2 tanh(W1 f))      one weight per feature channel, summing to 1
    f' = D * a * f                  FedCLIP L2-normalizes f' afterwards; scaling by D instead keeps
                                    the features' magnitude for a linear head without renormalizing
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mpsl.registry import Registry


class AttentionAdapter(nn.Module):
    """Linear-Tanh-Linear-Softmax over the channels of one feature vector: [..., D] -> [..., D]."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, width), nn.Softmax(dim=-1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features.shape[-1] * self.gate(features) * features


class PerModalityAdapters(nn.Module):
    """One adapter per modality, applied to that modality's feature: [B, M, D] -> [B, M, D]."""

    def __init__(self, width: int, modalities: list[str]) -> None:
        super().__init__()
        self.adapters = nn.ModuleList(AttentionAdapter(width) for _ in modalities)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.stack([a(features[:, i]) for i, a in enumerate(self.adapters)], dim=1)  # M x [B, D] -> [B, M, D]


ADAPTERS: Registry[Callable[[int, list[str]], nn.Module]] = Registry("adapter")
ADAPTERS.register("none")(lambda width, modalities: nn.Identity())
ADAPTERS.register("shared")(lambda width, modalities: AttentionAdapter(width))
ADAPTERS.register("per-modality")(PerModalityAdapters)
