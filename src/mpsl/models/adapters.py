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


class SharedAdapter(nn.Module):
    """One adapter for every feature row, whatever its modality: [B, R, D] -> [B, R, D]."""

    def __init__(self, width: int, modalities: list[str]) -> None:
        super().__init__()
        self.adapter = AttentionAdapter(width)

    def forward(self, features: torch.Tensor, rows: list[str]) -> torch.Tensor:
        return self.adapter(features)


class PerModalityAdapters(nn.Module):
    """One adapter per modality, applied to the feature rows of that modality: [B, R, D] -> [B, R, D]."""

    def __init__(self, width: int, modalities: list[str]) -> None:
        super().__init__()
        self.adapters = nn.ModuleDict({m: AttentionAdapter(width) for m in modalities})

    def forward(self, features: torch.Tensor, rows: list[str]) -> torch.Tensor:
        return torch.stack([self.adapters[m](features[:, i]) for i, m in enumerate(rows)], dim=1)  # R x [B, D]


class NoAdapter(nn.Module):
    def forward(self, features: torch.Tensor, rows: list[str]) -> torch.Tensor:
        return features


# (width, modalities) -> module(features [B, R, D], the modality of each row) -> [B, R, D]
ADAPTERS: Registry[Callable[[int, list[str]], nn.Module]] = Registry(
    "adapter", config_keys=("model.adapter", "fl.adapter"))
ADAPTERS.register("none")(lambda width, modalities: NoAdapter())
ADAPTERS.register("shared")(SharedAdapter)
ADAPTERS.register("per-modality")(PerModalityAdapters)
