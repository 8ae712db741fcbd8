"""Task heads: they read the per-modality CLS features [b, M, D]."""

from __future__ import annotations

import torch
from torch import nn


class ClassifierHead(nn.Module):
    """Average the modality CLS features, then a linear classifier: [b, M, D] -> [b, C]."""

    def __init__(self, width: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(width, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features.mean(dim=1))  # [b, M, D] -> [b, D] -> [b, C]
