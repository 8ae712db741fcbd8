"""Classification: cross-entropy and correct counts, both computed on the client."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mpsl.tasks.base import TASKS


@TASKS.register("classification")
class ClassificationTask:
    metric = "accuracy"
    ablations = True

    def loss(self, predictions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(predictions, labels)  # [b, C], [b] -> []

    def correct(self, predictions: torch.Tensor, labels: torch.Tensor) -> int:
        return int(self.hits(predictions, labels))

    def hits(self, predictions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return (predictions.argmax(dim=1) == labels).sum()  # [b, C], [b] -> []

    def scores(self, predictions: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        return {"accuracy": self.correct(predictions, labels) / max(len(labels), 1)}
