"""What a task is: the loss and metrics a client computes on its own slice, and the test-set scores."""

from __future__ import annotations

from typing import ClassVar, Protocol

import torch

from mpsl.registry import Registry


class Task(Protocol):
    metric: ClassVar[str]  # the headline test score, a key of `scores` (compared and plotted across methods)
    ablations: ClassVar[bool]  # whether single-modality test scores mean something for this task

    def loss(self, predictions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean loss over the batch (a scalar)."""
        ...

    def correct(self, predictions: torch.Tensor, labels: torch.Tensor) -> int:
        """Training hits in one mini-batch (classification: right labels; retrieval: top-1 matches)."""
        ...

    def hits(self, predictions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """`correct` as a 0-d tensor, with no Python control flow on values: batched clients vmap it."""
        ...

    def scores(self, predictions: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """Test metrics over the whole test set's predictions, all in [0, 1]."""
        ...


TASKS: Registry[type] = Registry("task")
