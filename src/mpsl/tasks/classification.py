"""Classification: cross-entropy and correct counts, both computed on the client."""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from mpsl.registry import Registry


class Task(Protocol):
    def loss(self, predictions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean loss over the batch (a scalar)."""
        ...

    def correct(self, predictions: torch.Tensor, labels: torch.Tensor) -> int:
        ...


class ClassificationTask:
    def loss(self, predictions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(predictions, labels)  # [b, C], [b] -> []

    def correct(self, predictions: torch.Tensor, labels: torch.Tensor) -> int:
        return int((predictions.argmax(dim=1) == labels).sum())


TASKS: Registry[type] = Registry("task")
TASKS.register("classification")(ClassificationTask)
