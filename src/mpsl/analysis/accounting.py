"""What a client computes and holds per sample: FLOPs from `analysis.flops` (attention matmuls
included) and a memory estimate from the parameters, Adam's state and the tensors autograd saves."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import nn

from mpsl.analysis.flops import count_flops
from mpsl.data import SplitData
from mpsl.models import ClientModel, ServerModel, WholeModel
from mpsl.tasks import Task

R = TypeVar("R")
ADAM_STATES = 2  # exp_avg and exp_avg_sq per trainable parameter


@dataclass(frozen=True)
class Flops:
    client_per_sample: float  # tokenizers (+ head) forward and backward
    server_per_sample: float  # encoder (+ head) forward and backward


def training_flops(client: ClientModel, server: ServerModel, batch: SplitData, task: Task) -> Flops:
    """One training pass split at the cut exactly as the protocol splits it, on copies of the models."""
    client, server = copy.deepcopy(client), copy.deepcopy(server)
    tokens, c_fwd = count_flops(lambda: client.embed(batch.inputs))  # m -> [b, T_m, D]
    cut = {m: t.detach().requires_grad_(True) for m, t in tokens.items()}
    outputs, s_fwd = count_flops(lambda: server(cut))
    features = outputs.detach().requires_grad_(True)
    _, c_head = count_flops(lambda: task.loss(client.head(features), batch.labels).backward())
    _, s_bwd = count_flops(lambda: outputs.backward(features.grad))
    _, c_bwd = count_flops(lambda: torch.autograd.backward([tokens[m] for m in tokens],
                                                           [cut[m].grad for m in tokens]))
    n = len(batch)
    return Flops((c_fwd + c_head + c_bwd).total / n, (s_fwd + s_bwd).total / n)


def trainable_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


@dataclass(frozen=True)
class Memory:
    """Peak-memory estimate of one training step, in bytes."""

    parameters: int
    optimizer: int
    activations: int  # tensors saved for backward during one mini-batch forward

    @property
    def total(self) -> int:
        return self.parameters + self.optimizer + self.activations


def _saved_bytes(fn: Callable[[], object], params: nn.Module) -> int:
    """Bytes of the distinct storages autograd saves for backward while `fn` runs, parameters excluded."""
    own = {p.untyped_storage().data_ptr() for p in params.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in own:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(saved.values())


def client_memory(model: WholeModel, batch: SplitData, task: Task, runs_encoder: bool) -> Memory:
    """What one client holds during a step on `batch`: its part of the model, Adam moments, activations.

    A split-learning client holds its tokenizers (+ head) and the activations of those alone; an FL
    client (runs_encoder) holds and runs the whole model.
    """
    model = copy.deepcopy(model)
    held: nn.Module = model if runs_encoder else model.client
    params = sum(p.numel() * p.element_size() for p in held.parameters())
    optimizer = ADAM_STATES * sum(p.numel() * p.element_size() for p in held.parameters() if p.requires_grad)
    model.train()
    if runs_encoder:
        activations = _saved_bytes(lambda: task.loss(model(batch.inputs), batch.labels), held)
    else:
        with torch.no_grad():
            features = model.server(model.client.embed(batch.inputs))  # [b, M, D]: what the server sends
        activations = _saved_bytes(lambda: model.client.embed(batch.inputs), held)
        activations += _saved_bytes(lambda: task.loss(model.client.head(features.requires_grad_(True)),
                                                       batch.labels), held)
    return Memory(params, optimizer, activations)
