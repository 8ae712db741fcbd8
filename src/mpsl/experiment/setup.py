"""Assemble a simulated run: the server, the clients with their data shards, and their handles.

A method only decides how the training data is spread over clients; every method trains through
the same MPSL step, so a comparison between them compares data placement and nothing else.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from mpsl.config import Config, client_batch_sizes
from mpsl.data import Dataset, SplitData, partition
from mpsl.models import ClientModel, build_split_model
from mpsl.protocol import SplitClient, SplitServer
from mpsl.registry import Registry
from mpsl.runtime import InProcessHandle
from mpsl.tasks import TASKS

Shards = Callable[[Config, Dataset], list[SplitData]]
METHODS: Registry[Shards] = Registry("method")


@METHODS.register("mpsl")
def _mpsl_shards(cfg: Config, dataset: Dataset) -> list[SplitData]:
    """Each of num_clients clients holds one partition of the training set."""
    parts = partition(dataset.train.labels.numpy(), cfg.num_clients, cfg.partition, cfg.seed)
    return [dataset.train.subset(torch.from_numpy(p)) for p in parts]


@METHODS.register("centralized")
def _centralized_shards(cfg: Config, dataset: Dataset) -> list[SplitData]:
    """One party holds all data, batch B: plain fine-tuning (split equals unsplit makes the cut inert)."""
    return [dataset.train]


def adam(params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Optimizer | None:
    trainable = [p for p in params if p.requires_grad]
    return torch.optim.Adam(trainable, lr=lr, weight_decay=weight_decay) if trainable else None


def step_lr(opt: torch.optim.Optimizer | None, cfg: Config) -> torch.optim.lr_scheduler.LRScheduler | None:
    if opt is None:
        return None
    return torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.train.lr_step, gamma=cfg.train.lr_gamma)


@dataclass
class Simulation:
    server: SplitServer
    clients: list[SplitClient]
    handles: list[InProcessHandle]
    initial_client: ClientModel  # every client starts as this model


def build_simulation(cfg: Config, dataset: Dataset, method: str) -> Simulation:
    shards = METHODS.get(method)(cfg, dataset)
    template, server_model = build_split_model(cfg.model, dataset.spec, cfg.seed)
    task = TASKS.get(dataset.spec.task)()
    batches = client_batch_sizes(cfg, [len(s) for s in shards])
    clients = []
    for k, (shard, batch) in enumerate(zip(shards, batches, strict=True)):
        model = copy.deepcopy(template)
        opt = adam(model.parameters(), cfg.train.client_lr, cfg.train.weight_decay)
        clients.append(SplitClient(k, model, shard, task, batch, opt, step_lr(opt, cfg), seed=cfg.seed * 1009 + k))
    server_opt = adam(server_model.parameters(), cfg.train.server_lr, cfg.train.weight_decay)
    server = SplitServer(server_model, server_opt, step_lr(server_opt, cfg))
    return Simulation(server, clients, [InProcessHandle(c) for c in clients], template)
