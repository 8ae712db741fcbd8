"""Test-set evaluation of an assembled split model, and what each modality contributes."""

from __future__ import annotations

import torch

from mpsl.data import SplitData
from mpsl.data.loader import batches
from mpsl.devices import module_device, to_device
from mpsl.models import ClientModel, ServerModel
from mpsl.tasks import Task


@torch.no_grad()
def predictions(client: ClientModel, server: ServerModel, data: SplitData, batch_size: int) -> torch.Tensor:
    """The model's outputs for every sample of `data`, in order: [N, C] logits or [N, 1 + K, D] embeddings."""
    client.eval()
    server.eval()
    out = []
    device = module_device(server)
    client_device = module_device(client)
    for batch in batches(data, torch.arange(len(data)), batch_size, client_device, depth=2):  # [b], in order
        features = server(to_device(client.embed(batch.inputs), device))  # [b, ...] on the server's device
        out.append(client.head(features.to(client_device)).cpu())  # [b, ...]
    return torch.cat(out)  # [N, ...]


def evaluate(client: ClientModel, server: ServerModel, data: SplitData, task: Task,
             batch_size: int, split: str = "test") -> dict[str, float]:
    """Every metric of the task on `data`, keyed `<split>_<metric>` (e.g. test_accuracy, val_i2t_r1)."""
    scores = task.scores(predictions(client, server, data, batch_size), data.labels)
    return {f"{split}_{k}": v for k, v in scores.items()}


def headline(client: ClientModel, server: ServerModel, data: SplitData, task: Task, batch_size: int) -> float:
    """The task's headline test score (classification: accuracy; retrieval: mean Recall@K)."""
    return evaluate(client, server, data, task, batch_size)[f"test_{task.metric}"]


def modality_ablations(client: ClientModel, server: ServerModel, data: SplitData, task: Task,
                       batch_size: int) -> dict[str, float]:
    """The headline score with only one modality kept (the others blanked): shows what fusion adds."""
    if len(data.modalities) < 2 or not task.ablations:
        return {}
    result = {}
    for keep in data.modalities:
        blanked = data
        for other in data.modalities:
            if other != keep:
                blanked = blanked.blank(other)
        result[f"test_{task.metric}_{keep}_only"] = headline(client, server, blanked, task, batch_size)
    return result
