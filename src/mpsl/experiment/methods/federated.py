"""Federated Learning baselines: every client trains the whole model locally, the server averages.

    fedavg          same model and trainable subset as MPSL; 1 local epoch; sample-weighted average
    fedavg-adapter  FedCLIP-style: frozen encoder, attention adapters + tokenizers + head trained

One working copy of the model is trained by each selected client in turn, starting from the global
weights it received; a client keeps only its optimizer state and data order between rounds (as the
paper's baseline), so simulating many clients costs one model plus their optimizer states.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch

from mpsl.config import Config, client_batch_sizes
from mpsl.data import Dataset, SplitData
from mpsl.experiment.averaging import WeightedAverage, load_trainable, trainable_state
from mpsl.experiment.methods.base import (
    Method,
    RoundStats,
    progress_bar,
    register,
    whole_model,
    whole_model_adam,
)
from mpsl.experiment.methods.local import local_epoch
from mpsl.models import WholeModel
from mpsl.parties import client_seed, client_shards
from mpsl.progress import Progress
from mpsl.protocol import Codec, Weights
from mpsl.runtime import Traffic, carry
from mpsl.tasks import Task


@dataclass
class FLClient:
    """What a federated client keeps between rounds."""

    client_id: int
    data: SplitData
    batch_size: int
    order: torch.Generator  # its data-order RNG
    optimizer_state: dict[str, Any] | None = None
    traffic: Traffic = field(default_factory=Traffic)


def local_update(worker: WholeModel, received: Weights, client: FLClient, cfg: Config, task: Task,
                 round_lr_scale: float, bar: Progress | None = None) -> tuple[Weights, RoundStats]:
    """One client's round: start from the global weights, train `fl.local_epochs`, return its weights."""
    load_trainable(worker, received.tensors)
    opt = whole_model_adam(worker, cfg)
    if opt is not None:
        base = [group["lr"] for group in opt.param_groups]  # loading a state would overwrite them
        if client.optimizer_state is not None:
            opt.load_state_dict(client.optimizer_state)
        for group, lr in zip(opt.param_groups, base, strict=True):
            group["lr"] = lr * round_lr_scale
    stats = RoundStats()
    for _ in range(cfg.fl.local_epochs):
        epoch = local_epoch(worker, opt, client.data, client.batch_size, client.order, task, cfg.runtime,
                            cfg.model.precision, bar)
        stats.add(epoch.loss, epoch.correct, epoch.count, epoch.steps)
    if opt is not None:
        client.optimizer_state = opt.state_dict()
    return Weights(received.round, len(client.data), trainable_state(worker)), stats


@register
class FedAvg(Method):
    name = "fedavg"
    schedule = "rounds"
    round_word = "round"
    client_runs_encoder = True

    @classmethod
    def grid(cls, cfg: Config) -> list[dict[str, Any]]:
        """Each rate with each number of local epochs per round."""
        return [{**rates, "fl.local_epochs": e} for rates in super().grid(cfg) for e in cfg.tune.local_epochs]

    def __init__(self, cfg: Config, dataset: Dataset) -> None:
        super().__init__(cfg, dataset)
        self.model = whole_model(self)  # the global model
        self.worker = copy.deepcopy(self.model)  # trained by each client in turn
        shards = client_shards(cfg, dataset)
        batches = client_batch_sizes(cfg, [len(s) for s in shards])
        self.clients = [FLClient(k, shard, b, torch.Generator().manual_seed(client_seed(cfg, k)))
                        for k, (shard, b) in enumerate(zip(shards, batches, strict=True))]
        self.codec = Codec()
        self.selection = torch.Generator().manual_seed(cfg.seed)

    def participants(self) -> list[int]:
        """All clients, or `fl.clients_per_round` of them drawn without replacement each round."""
        n, m = len(self.clients), self.cfg.fl.clients_per_round
        if m is None or m >= n:
            return list(range(n))
        return sorted(torch.randperm(n, generator=self.selection)[:m].tolist())

    def train_round(self, epoch: int, progress: bool) -> RoundStats:
        chosen = [self.clients[k] for k in self.participants()]
        scale = self.cfg.train.lr_gamma ** (epoch // self.cfg.train.lr_step)  # StepLR, per round
        steps = sum(-(-len(c.data) // c.batch_size) for c in chosen) * self.cfg.fl.local_epochs
        broadcast = Weights(epoch, 0, trainable_state(self.model))
        average, stats = WeightedAverage(), RoundStats()
        with progress_bar(f"{self.name} round {epoch + 1}", steps, progress) as bar:
            for client in chosen:
                received = carry(self.codec, client.traffic, broadcast, "down")
                update, local = local_update(self.worker, received, client, self.cfg, self.task, scale, bar)
                sent = carry(self.codec, client.traffic, update, "up")
                average.add(sent.tensors, sent.num_samples)
                stats.add(local.loss, local.correct, local.count, local.steps)
        load_trainable(self.model, average.result())
        return stats

    def global_model(self) -> WholeModel:
        return self.model

    def traffic(self) -> list[Traffic]:
        return [c.traffic for c in self.clients]


@register
class FedAvgAdapter(FedAvg):
    """FedCLIP-style FL: the encoder stays frozen; adapters, tokenizers and head are trained and averaged."""

    name = "fedavg-adapter"

    @classmethod
    def configure(cls, cfg: Config) -> Config:
        return cfg.replace(**{"model.encoder.trainable_blocks": 0, "model.adapter": cfg.fl.adapter})
