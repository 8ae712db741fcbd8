"""Sample-weighted parameter averaging (FedAvg), shared by the federated baselines and MPSL's evaluation."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import TypeVar

import torch
from torch import nn

from mpsl.errors import ProtocolError

M = TypeVar("M", bound=nn.Module)


class WeightedAverage:
    """Running sum_k w_k x_k / sum_k w_k over named tensors, accumulated in float64, one state at a time."""

    def __init__(self) -> None:
        self._sum: dict[str, torch.Tensor] = {}
        self._dtypes: dict[str, torch.dtype] = {}
        self._weight = 0.0

    def add(self, tensors: Mapping[str, torch.Tensor], weight: float) -> None:
        if weight < 0:
            raise ValueError(f"averaging weight must not be negative, got {weight}")
        if self._sum and set(tensors) != set(self._sum):
            missing, extra = sorted(set(self._sum) - set(tensors)), sorted(set(tensors) - set(self._sum))
            raise ProtocolError(f"weights to average differ in names: missing {missing}, unexpected {extra}")
        for name, t in tensors.items():
            if name in self._sum:
                self._sum[name] += t.detach().double() * weight
            else:
                self._sum[name] = t.detach().double() * weight
                self._dtypes[name] = t.dtype
        self._weight += weight

    def result(self) -> dict[str, torch.Tensor]:
        if self._weight <= 0:
            raise ValueError("nothing to average: no state with a positive weight was added")
        return {name: (s / self._weight).to(self._dtypes[name]) for name, s in self._sum.items()}


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a federated party sends: its trainable parameters (frozen ones are the same everywhere)."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def load_trainable(model: nn.Module, tensors: Mapping[str, torch.Tensor]) -> None:
    """Overwrite the trainable parameters; the names and shapes must match exactly."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if set(params) != set(tensors):
        missing, extra = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
        raise ProtocolError(f"weights do not fit the model: missing {missing[:5]}, unexpected {extra[:5]}")
    for name, p in params.items():
        if tensors[name].shape != p.shape:
            raise ProtocolError(f"weights for {name}: shape {tuple(tensors[name].shape)}, model has {tuple(p.shape)}")
        p.copy_(tensors[name])


def fedavg(models: Sequence[M], weights: Sequence[float]) -> M:
    """A new model whose trainable parameters are the sample-weighted average of `models`."""
    average = WeightedAverage()
    for model, weight in zip(models, weights, strict=True):
        average.add(trainable_state(model), weight)
    merged = copy.deepcopy(models[0])
    load_trainable(merged, average.result())
    return merged
