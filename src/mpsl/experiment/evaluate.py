"""Test-set evaluation of an assembled split model, and what each modality contributes."""

from __future__ import annotations

import torch

from mpsl.data import SplitData
from mpsl.models import ClientModel, ServerModel
from mpsl.tasks import Task


@torch.no_grad()
def accuracy(client: ClientModel, server: ServerModel, data: SplitData, task: Task, batch_size: int) -> float:
    client.eval()
    server.eval()
    correct = 0
    for start in range(0, len(data), batch_size):
        batch = data.subset(torch.arange(start, min(start + batch_size, len(data))))
        predictions = client.head(server(client.embed(batch.inputs)))  # [b, C]
        correct += task.correct(predictions, batch.labels)
    return correct / len(data)


def modality_ablations(client: ClientModel, server: ServerModel, data: SplitData, task: Task,
                       batch_size: int) -> dict[str, float]:
    """Accuracy with only one modality kept (the others blanked): shows what fusion adds."""
    if len(data.modalities) < 2:
        return {}
    result = {}
    for keep in data.modalities:
        blanked = data
        for other in data.modalities:
            if other != keep:
                blanked = blanked.blank(other)
        result[f"test_accuracy_{keep}_only"] = accuracy(client, server, blanked, task, batch_size)
    return result
