"""Split-learning methods, both driven by the one MPSL step: `mpsl` and the `splitfed` reference.

    mpsl      one server encoder, one forward/backward over all clients' tokens per step
    splitfed  SplitFed v1: one server copy per client, each stepped with its own client; after each
              round the server copies are averaged on the server and the client models through a
              FedAvg exchange (the per-client server state and the synchronization MPSL removes)
"""

from __future__ import annotations

import copy
from dataclasses import astuple
from typing import Any

import torch

from mpsl.config import Config, client_batch_sizes
from mpsl.data import Dataset
from mpsl.errors import ConfigError
from mpsl.experiment.averaging import WeightedAverage, fedavg, load_trainable, trainable_state
from mpsl.experiment.methods.base import (
    Method,
    RoundStats,
    progress_bar,
    register,
)
from mpsl.models import ClientModel, WholeModel
from mpsl.parties import client_shards, split_client, split_server
from mpsl.protocol import ClientGroup, Codec, HandleGroup, SplitClient, Weights, mpsl_step
from mpsl.runtime import InProcessHandle, Traffic, carry
from mpsl.runtime.batched import BatchedClients, unsupported
from mpsl.runtime.distributed import TorchWorld, owner, replica_share


def _split_grid(cfg: Config) -> list[dict[str, Any]]:
    """Two parties, two optimizers: every (server rate, client rate) pair."""
    factors = cfg.tune.lr_factors
    return [{"train.server_lr": cfg.train.server_lr * fs, "train.client_lr": cfg.train.client_lr * fc}
            for fs in factors for fc in factors]


def _clients(method: Method, optimizers: bool = True) -> list[SplitClient]:
    shards = client_shards(method.cfg, method.dataset)
    batches = client_batch_sizes(method.cfg, [len(s) for s in shards])
    return [split_client(method.cfg, k, shard, batch, method.client_template, method.task, optimizers)
            for k, (shard, batch) in enumerate(zip(shards, batches, strict=True))]


@register
class Mpsl(Method):
    """Multimodal Parallel Split Learning: client tokenizers, one shared server encoder."""

    name = "mpsl"
    grid = staticmethod(_split_grid)
    replicated = True

    def __init__(self, cfg: Config, dataset: Dataset, world: TorchWorld | None = None) -> None:
        super().__init__(cfg, dataset)
        # runtime.clients: batched unless the client model needs the loop to keep the math (the reason is printed)
        self.fallback = None if cfg.runtime.clients == "loop" else unsupported(self.client_template, self.task)
        if self.fallback is not None:
            print(f"mpsl: runtime.clients=batched cannot run this client model exactly, so clients run one after "
                  f"another: {self.fallback}", flush=True)
        self.batched = cfg.runtime.clients == "batched" and self.fallback is None
        self.world = world
        self.clients = _clients(self, optimizers=not self.batched)  # every client, from the same seeds on every rank
        # with server replicas this rank runs only its share of the clients; the others' copies wait for `_share`
        mine = (self.clients if world is None else
                [self.clients[k] for k in replica_share(world.rank, world.size, len(self.clients))])
        self.server = split_server(copy.deepcopy(self.server_template), cfg, world)  # the templates stay on the host
        self.handles = [] if self.batched else [InProcessHandle(c) for c in mine]
        self.group: ClientGroup = (
            BatchedClients(mine, self.task, cfg.train.client_lr, cfg.train.weight_decay, cfg.train.lr_step,
                           cfg.train.lr_gamma) if self.batched else HandleGroup(self.handles))
        self.step = 0
        self._traffic: list[Traffic] | None = None  # every client's, shared by the replicas after a round
        if cfg.train.client_sync_every is not None and world is not None:
            raise ConfigError("train.client_sync_every averages every client's model mid-epoch, which server "
                              "replicas do not hold: use one process")
        self.codec = Codec()

    def train_round(self, epoch: int, progress: bool) -> RoundStats:
        self.group.start_epoch(epoch)
        stats = RoundStats()
        steps = max(-(-len(c.data) // c.batch_size) for c in self.clients)
        with progress_bar(f"mpsl epoch {epoch + 1}", steps, progress) as bar:
            while (result := mpsl_step(self.server, self.group, self.step)) is not None:
                for cid, reason in result.contained.items():  # simulated clients are honest: a diverging model
                    print(f"mpsl: step {self.step}: client {cid} left out by the server's guard: {reason}", flush=True)
                if result.skipped is not None:
                    print(f"mpsl: step {self.step}: the server skipped its update: {result.skipped}", flush=True)
                stats.add(result.loss, result.correct, result.count)  # normalized by samples actually seen
                self.step += 1
                if self.cfg.train.client_sync_every and self.step % self.cfg.train.client_sync_every == 0:
                    self._sync_clients(epoch)
                bar.update(1)
                bar.set_postfix(loss=f"{stats.loss:.3f}", clients=len(result.client_ids))
        self.server.end_epoch()
        self.group.end_epoch()
        if self.world is not None:
            self._share(self.world)
        return stats

    def _sync_clients(self, epoch: int) -> None:
        """train.client_sync_every: a FedAvg exchange of the client models (weighted by samples), through the wire
        encoding and counted, written in place (batched clients' parameters are views of their stacks)."""
        traffic = self._own_traffic()
        average = WeightedAverage()
        for c, t in zip(self.clients, traffic, strict=True):
            sent = carry(self.codec, t, Weights(epoch, len(c.data), trainable_state(c.model)), "up")
            average.add(sent.tensors, sent.num_samples)
        merged = Weights(epoch, 0, average.result())
        for c, t in zip(self.clients, traffic, strict=True):
            load_trainable(c.model, carry(self.codec, t, merged, "down").tensors)

    def _own_traffic(self) -> list[Traffic]:
        return self.group.traffic if isinstance(self.group, BatchedClients) else [h.traffic for h in self.handles]

    def _share(self, world: TorchWorld) -> None:
        """Every rank gets every client's weights, samples seen and bytes from the rank that ran it, so that each
        can evaluate, average and report the whole federation (one broadcast per client and dtype)."""
        own = dict(zip((c.client_id for c in self.group.clients) if isinstance(self.group, BatchedClients)
                       else (h.client_id for h in self.handles), self._own_traffic(), strict=True))
        self._traffic = []
        for k, c in enumerate(self.clients):
            t = own.get(c.client_id, Traffic())
            counters = torch.tensor([c.samples_seen, *astuple(t)], dtype=torch.float64)  # [1 + 5]
            world.broadcast([*c.model.state_dict().values(), counters], src=owner(k, world.size))
            c.samples_seen = int(counters[0])
            self._traffic.append(Traffic(*(int(v) for v in counters[1:])))

    def global_model(self) -> WholeModel:
        """FedAvg of the client models weighted by samples seen: for evaluation only, never sent back."""
        clients = [c.model for c in self.clients]
        merged = clients[0] if len(clients) == 1 else fedavg(clients, [c.samples_seen for c in self.clients])
        return WholeModel(merged, self.server.model)

    def personal_models(self) -> list[ClientModel]:
        return [c.model for c in self.clients] if len(self.clients) > 1 else []

    def traffic(self) -> list[Traffic]:
        return self._own_traffic() if self._traffic is None else self._traffic


@register
class SplitFed(Method):
    """SplitFed v1: a server-side model copy per client, both sides FedAvg-ed after every round."""

    name = "splitfed"
    grid = staticmethod(_split_grid)
    schedule = "pairs"
    round_word = "round"

    def __init__(self, cfg: Config, dataset: Dataset) -> None:
        super().__init__(cfg, dataset)
        self.clients = _clients(self)
        self.servers = [split_server(copy.deepcopy(self.server_template), cfg) for _ in self.clients]
        self.handles = [InProcessHandle(c) for c in self.clients]
        self.codec = Codec()
        self.steps = [0] * len(self.clients)

    def train_round(self, epoch: int, progress: bool) -> RoundStats:
        for h in self.handles:
            h.start_epoch(epoch)
        stats = RoundStats()
        active = list(range(len(self.clients)))
        total = sum(-(-len(c.data) // c.batch_size) for c in self.clients)
        with progress_bar(f"splitfed round {epoch + 1}", total, progress) as bar:
            while active:  # the pairs are independent; interleaving them stands in for running in parallel
                for k in list(active):
                    result = mpsl_step(self.servers[k], [self.handles[k]], self.steps[k])
                    if result is None:
                        active.remove(k)
                        continue
                    self.steps[k] += 1
                    stats.add(result.loss, result.correct, result.count)
                    bar.update(1)
                    bar.set_postfix(loss=f"{stats.loss:.3f}")
        for server, h in zip(self.servers, self.handles, strict=True):
            server.end_epoch()
            h.end_epoch()
        self._synchronize(epoch)
        return stats

    def _synchronize(self, epoch: int) -> None:
        weights = [len(c.data) for c in self.clients]
        servers = WeightedAverage()  # on the server itself: no network
        for server, w in zip(self.servers, weights, strict=True):
            servers.add(trainable_state(server.model), w)
        server_state = servers.result()
        for server in self.servers:
            load_trainable(server.model, server_state)

        clients = WeightedAverage()  # client sides: a FedAvg exchange through the wire encoding
        for c, h in zip(self.clients, self.handles, strict=True):
            sent = carry(self.codec, h.traffic, Weights(epoch, len(c.data), trainable_state(c.model)), "up")
            clients.add(sent.tensors, sent.num_samples)
        merged = Weights(epoch, 0, clients.result())
        for c, h in zip(self.clients, self.handles, strict=True):
            load_trainable(c.model, carry(self.codec, h.traffic, merged, "down").tensors)

    def global_model(self) -> WholeModel:
        return WholeModel(self.clients[0].model, self.servers[0].model)  # all copies equal after a round

    def traffic(self) -> list[Traffic]:
        return [h.traffic for h in self.handles]
