"""What each side computes per sample, counted by torch's FlopCounterMode (attention matmuls included)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch.utils.flop_counter import FlopCounterMode

from mpsl.data import SplitData
from mpsl.models import ClientModel, ServerModel
from mpsl.tasks import Task

R = TypeVar("R")


@dataclass(frozen=True)
class Flops:
    client_per_sample: float  # tokenizers (+ head) forward and backward
    server_per_sample: float  # encoder (+ head) forward and backward


def _counted(fn: Callable[[], R]) -> tuple[R, int]:
    with FlopCounterMode(display=False) as counter:
        result = fn()
    return result, counter.get_total_flops()


def training_flops(client: ClientModel, server: ServerModel, batch: SplitData, task: Task) -> Flops:
    """One training pass split at the cut exactly as the protocol splits it, on copies of the models."""
    client, server = copy.deepcopy(client), copy.deepcopy(server)
    tokens, c_fwd = _counted(lambda: client.embed(batch.inputs))  # m -> [b, T_m, D]
    cut = {m: t.detach().requires_grad_(True) for m, t in tokens.items()}
    outputs, s_fwd = _counted(lambda: server(cut))
    features = outputs.detach().requires_grad_(True)
    _, c_head = _counted(lambda: task.loss(client.head(features), batch.labels).backward())
    _, s_bwd = _counted(lambda: outputs.backward(features.grad))
    _, c_bwd = _counted(lambda: torch.autograd.backward([tokens[m] for m in tokens], [cut[m].grad for m in tokens]))
    n = len(batch)
    return Flops((c_fwd + c_head + c_bwd) / n, (s_fwd + s_bwd) / n)


def trainable_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
