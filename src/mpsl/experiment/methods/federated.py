"""Federated Learning baselines: every client trains the whole model locally, the server averages.

    fedavg          same model and trainable subset as MPSL; 1 local epoch; sample-weighted average
    fedavg-adapter  FedCLIP-style: frozen encoder, attention adapters + tokenizers + head trained

One working copy of the model is trained by each selected client in turn, starting from the global
weights it received; a client keeps only its optimizer state and data order between rounds (as the
paper's baseline), so simulating many clients costs one model plus their optimizer states.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from typing import Any

import torch

from mpsl.config import Config, client_batch_sizes
from mpsl.data import Dataset, SplitData
from mpsl.experiment.averaging import WeightedAverage, load_trainable, trainable_state
from mpsl.experiment.methods.base import (
    Method,
    RoundStats,
    client_actors,
    progress_bar,
    register,
    whole_model,
    whole_model_adam,
    whole_model_of,
)
from mpsl.experiment.methods.local import local_epoch
from mpsl.models import ClientModel, ServerModel, WholeModel
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
        shards = client_shards(cfg, dataset)
        batches = client_batch_sizes(cfg, [len(s) for s in shards])
        self.clients = fl_clients(cfg, shards, batches, list(range(cfg.num_clients)))
        self.codec = Codec()
        self.selection = torch.Generator().manual_seed(cfg.seed)
        # trained by each client in turn; on Ray each client actor trains its own copy and keeps the clients'
        # optimizer states and data orders (the driver's FLClients then keep only their data and byte counts)
        self.worker = FLWorker(copy.deepcopy(self.model), self.clients, cfg, self.task)
        self.remote = None
        if cfg.runtime.kind == "ray":
            self.remote, self.slices = client_actors(cfg, len(shards), lambda ids: functools.partial(
                _actor_worker, cfg, self.client_template, self.server_template, [shards[k] for k in ids],
                [batches[k] for k in ids], ids, self.task))

    def participants(self) -> list[int]:
        """All clients, or `fl.clients_per_round` of them drawn without replacement each round."""
        n, m = len(self.clients), self.cfg.fl.clients_per_round
        if m is None or m >= n:
            return list(range(n))
        return sorted(torch.randperm(n, generator=self.selection)[:m].tolist())

    def train_round(self, epoch: int, progress: bool) -> RoundStats:
        chosen = self.participants()
        scale = self.cfg.train.lr_gamma ** (epoch // self.cfg.train.lr_step)  # StepLR, per round
        broadcast = Weights(epoch, 0, trainable_state(self.model))
        if self.remote is None:
            steps = sum(-(-len(self.clients[k].data) // self.clients[k].batch_size) for k in chosen)
            with progress_bar(f"{self.name} round {epoch + 1}", steps * self.cfg.fl.local_epochs, progress) as bar:
                updates = self.worker.round(broadcast, chosen, scale, bar)
        else:  # every actor trains its chosen clients at once; the updates come back in client order
            per_actor = {i: (broadcast, [k for k in chosen if k in ids], scale) for i, ids in enumerate(self.slices)}
            updates = [u for part in self.remote.call_each(_actor_round, per_actor) for u in part]
        average, stats = WeightedAverage(), RoundStats()
        for update in updates:
            average.add(update.sent.tensors, update.sent.num_samples)
            stats.add(update.stats.loss, update.stats.correct, update.stats.count, update.stats.steps)
            self.clients[update.client_id].traffic = update.traffic
        load_trainable(self.model, average.result())
        return stats

    def global_model(self) -> WholeModel:
        return self.model

    def traffic(self) -> list[Traffic]:
        return [c.traffic for c in self.clients]

    def close(self) -> None:
        if self.remote is not None:
            self.remote.close()


def fl_clients(cfg: Config, shards: list[SplitData], batches: list[int], ids: list[int]) -> list[FLClient]:
    """Federated clients `ids` holding `shards`, each with its own data-order seed (the same on every runtime)."""
    return [FLClient(k, shard, b, torch.Generator().manual_seed(client_seed(cfg, k)))
            for k, shard, b in zip(ids, shards, batches, strict=True)]


@dataclass
class ClientUpdate:
    """One client's round as the server sees it: the weights that arrived, its training stats, its bytes."""

    client_id: int
    sent: Weights
    stats: RoundStats
    traffic: Traffic


class FLWorker:
    """One working copy of the model, trained by each of its clients in turn from the broadcast weights."""

    def __init__(self, model: WholeModel, clients: list[FLClient], cfg: Config, task: Task) -> None:
        self.model = model
        self.clients = {c.client_id: c for c in clients}
        self.cfg = cfg
        self.task = task
        self.codec = Codec()

    def round(self, broadcast: Weights, chosen: list[int], scale: float, bar: Progress | None = None
              ) -> list[ClientUpdate]:
        updates = []
        for k in chosen:
            client = self.clients[k]
            received = carry(self.codec, client.traffic, broadcast, "down")
            update, local = local_update(self.model, received, client, self.cfg, self.task, scale, bar)
            sent = carry(self.codec, client.traffic, update, "up")
            updates.append(ClientUpdate(k, sent, local, copy.copy(client.traffic)))
        return updates


def _actor_worker(cfg: Config, client_template: ClientModel, server_template: ServerModel, shards: list[SplitData],
                  batches: list[int], ids: list[int], task: Task) -> FLWorker:
    """A client actor's party: its slice of federated clients and a model copy they train in turn."""
    torch.manual_seed(cfg.seed)  # dropout draws from this process's generator: the same run by run
    model = whole_model_of(client_template, server_template, cfg)
    return FLWorker(model, fl_clients(cfg, shards, batches, ids), cfg, task)


def _actor_round(worker: FLWorker, broadcast: Weights, chosen: list[int], scale: float) -> list[ClientUpdate]:
    return worker.round(broadcast, chosen, scale)


@register
class FedAvgAdapter(FedAvg):
    """FedCLIP-style FL: the encoder stays frozen; adapters, tokenizers and head are trained and averaged."""

    name = "fedavg-adapter"

    @classmethod
    def configure(cls, cfg: Config) -> Config:
        return cfg.replace(**{"model.encoder.trainable_blocks": 0, "model.adapter": cfg.fl.adapter})
