"""Test-set evaluation of the assembled model: FedAvg of the clients (paper) and per-client models."""

from __future__ import annotations

import copy
from collections.abc import Sequence

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


def fedavg(models: Sequence[ClientModel], weights: Sequence[float]) -> ClientModel:
    """Sample-weighted parameter average: how the paper builds one client model for evaluation only."""
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("fedavg needs at least one client that saw data")
    states = [m.state_dict() for m in models]
    averaged = {
        key: sum(s[key].double() * (w / total) for s, w in zip(states, weights, strict=True)).to(states[0][key].dtype)
        if states[0][key].is_floating_point() else states[0][key]
        for key in states[0]
    }
    merged = copy.deepcopy(models[0])
    merged.load_state_dict(averaged)
    return merged


def modality_ablations(client: ClientModel, server: ServerModel, data: SplitData, task: Task,
                       batch_size: int) -> dict[str, float]:
    """Accuracy with only one modality kept (the others blanked): shows what fusion adds."""
    if len(data.inputs) < 2:
        return {}
    result = {}
    for keep in data.inputs:
        blanked = data
        for other in data.inputs:
            if other != keep:
                blanked = blanked.blank(other)
        result[f"test_accuracy_{keep}_only"] = accuracy(client, server, blanked, task, batch_size)
    return result
