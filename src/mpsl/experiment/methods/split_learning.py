"""Split-learning methods, both driven by the one MPSL step: `mpsl` and the `splitfed` reference.

    mpsl      one server encoder, one forward/backward over all clients' tokens per step
    splitfed  SplitFed v1: one server copy per client, each stepped with its own client; after each
              round the server copies are averaged on the server and the client models through a
              FedAvg exchange (the per-client server state and the synchronization MPSL removes)
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Mapping
from dataclasses import astuple
from typing import Any

import torch

from mpsl.config import Config, client_batch_sizes
from mpsl.data import Dataset, SplitData
from mpsl.errors import ClientUnavailable, ConfigError
from mpsl.experiment.averaging import WeightedAverage, fedavg, load_trainable, trainable_state
from mpsl.experiment.methods.base import (
    Method,
    RoundStats,
    client_actors,
    progress_bar,
    register,
)
from mpsl.models import ClientModel, ServerModel, WholeModel
from mpsl.parties import client_shards, split_client, split_server
from mpsl.progress import Progress
from mpsl.protocol import ClientGroup, Codec, EpochMetrics, HandleGroup, SplitClient, SplitServer, Weights, mpsl_step
from mpsl.runtime import InProcessHandle, Traffic, carry
from mpsl.runtime.batched import BatchedClients, unsupported
from mpsl.runtime.distributed import TorchWorld, owner, replica_share
from mpsl.runtime.ray_actors import RayClientGroup, RayParties
from mpsl.tasks import Task


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


def _group(clients: list[SplitClient], batched: bool, cfg: Config, task: Task) -> ClientGroup:
    """The simulated clients behind the step's verbs: one batched computation, or one handle per client."""
    if batched:
        return BatchedClients(clients, task, cfg.train.client_lr, cfg.train.weight_decay, cfg.train.lr_step,
                              cfg.train.lr_gamma)
    return HandleGroup([InProcessHandle(c) for c in clients])


def _group_clients(group: ClientGroup) -> list[SplitClient]:
    return group.clients if isinstance(group, BatchedClients) else [h.client for h in group.handles]


def _group_traffic(group: ClientGroup) -> list[Traffic]:
    return group.traffic if isinstance(group, BatchedClients) else [h.traffic for h in group.handles]


def mpsl_epoch(server: SplitServer, group: ClientGroup, epoch: int, step: int, bar: Progress | None = None,
               after_step: Callable[[int], None] | None = None) -> tuple[RoundStats, int]:
    """One MPSL epoch from global step `step`: steps until no client offers a batch; (stats, next step).
    `after_step` is called with each step's number once it is done."""
    group.start_epoch(epoch)
    stats = RoundStats()
    while (result := mpsl_step(server, group, step)) is not None:
        for cid, reason in result.contained.items():  # simulated clients are honest: a diverging model
            print(f"mpsl: step {step}: client {cid} left out by the server's guard: {reason}", flush=True)
        if result.skipped is not None:
            print(f"mpsl: step {step}: the server skipped its update: {result.skipped}", flush=True)
        stats.steps += 1
        step += 1
        if after_step is not None:
            after_step(step)
        if bar is not None:
            bar.update(1)
            if result.loss is not None:  # step metrics (privacy.step_metrics): a running loss to show
                bar.set_postfix(loss=f"{result.loss:.3f}", clients=len(result.client_ids))
    server.end_epoch()
    epoch_metrics(stats, group.end_epoch())  # loss and accuracy as the clients report them, once per epoch
    return stats, step


def epoch_metrics(stats: RoundStats, reports: Mapping[int, EpochMetrics | ClientUnavailable]) -> None:
    """The round's training loss and accuracy from the clients' epoch reports (summed over their samples),
    the same totals the steps' metrics would add up to."""
    for report in reports.values():
        if isinstance(report, EpochMetrics):
            stats.loss_sum += report.loss_sum
            stats.correct += report.correct
            stats.count += report.count


@register
class Mpsl(Method):
    """Multimodal Parallel Split Learning: client tokenizers, one shared server encoder."""

    name = "mpsl"
    grid = staticmethod(_split_grid)
    replicated = True

    def __init__(self, cfg: Config, dataset: Dataset, world: TorchWorld | None = None) -> None:
        super().__init__(cfg, dataset)
        on_ray = cfg.runtime.kind == "ray"
        if world is not None and on_ray:
            raise ConfigError("runtime.kind=ray under torchrun: Ray and server replicas are two ways to scale out; "
                              "use one")
        if cfg.train.client_sync_every is not None and (world is not None or on_ray):
            raise ConfigError("train.client_sync_every averages every client's model mid-epoch, which server "
                              "replicas and Ray actors do not hold together: use one process (runtime.kind=inprocess)")
        # runtime.clients: batched unless the client model needs the loop to keep the math (the reason is printed)
        self.fallback = None if cfg.runtime.clients == "loop" else (
            unsupported(self.client_template, self.task)
            or ("privacy.nopeek needs each client's raw inputs at its backward" if cfg.privacy.nopeek else None))
        if self.fallback is not None:
            print(f"mpsl: runtime.clients=batched cannot run this client model exactly, so clients run one after "
                  f"another: {self.fallback}", flush=True)
        self.batched = cfg.runtime.clients == "batched" and self.fallback is None
        self.world = world
        # every client, from the same seeds on every rank; on Ray these are the driver's copies, refreshed after
        # every epoch for evaluation, and they never train here
        self.clients = _clients(self, optimizers=not (self.batched or on_ray))
        # with server replicas this rank runs only its share of the clients; the others' copies wait for `_share`
        mine = (self.clients if world is None else
                [self.clients[k] for k in replica_share(world.rank, world.size, len(self.clients))])
        self.server = split_server(copy.deepcopy(self.server_template), cfg, world)  # the templates stay on the host
        self.remote = _RayMpsl(self) if on_ray else None
        self.group: ClientGroup | None = None if on_ray else _group(mine, self.batched, cfg, self.task)
        # runtime.clients=loop: this process's per-client handles (the step's group wraps them); else none
        self.handles = self.group.handles if isinstance(self.group, HandleGroup) else []
        self.step = 0
        self._traffic: list[Traffic] | None = None  # every client's, shared by the replicas after a round
        self.codec = Codec()

    def train_round(self, epoch: int, progress: bool) -> RoundStats:
        if self.remote is not None:
            return self.remote.train_round(epoch)
        steps = max(-(-len(c.data) // c.batch_size) for c in self.clients)
        sync = self.cfg.train.client_sync_every
        with progress_bar(f"mpsl epoch {epoch + 1}", steps, progress) as bar:
            stats, self.step = mpsl_epoch(self.server, self.group, epoch, self.step, bar,
                                          lambda step: self._sync_clients(epoch) if sync and step % sync == 0 else None)
        if self.world is not None:
            self._share(self.world)
        return stats

    def _sync_clients(self, epoch: int) -> None:
        """train.client_sync_every: a FedAvg exchange of the client models (weighted by samples), through the wire
        encoding and counted, written in place (batched clients' parameters are views of their stacks)."""
        traffic = _group_traffic(self.group)
        average = WeightedAverage()
        for c, t in zip(self.clients, traffic, strict=True):
            sent = carry(self.codec, t, Weights(epoch, len(c.data), trainable_state(c.model)), "up")
            average.add(sent.tensors, sent.num_samples)
        merged = Weights(epoch, 0, average.result())
        for c, t in zip(self.clients, traffic, strict=True):
            load_trainable(c.model, carry(self.codec, t, merged, "down").tensors)

    def _share(self, world: TorchWorld) -> None:
        """Every rank gets every client's weights, samples seen and bytes from the rank that ran it, so that each
        can evaluate, average and report the whole federation (one broadcast per client and dtype)."""
        own = {c.client_id: t for c, t in zip(_group_clients(self.group), _group_traffic(self.group), strict=True)}
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
        if self.remote is not None:
            return self.remote.traffic
        return _group_traffic(self.group) if self._traffic is None else self._traffic

    def close(self) -> None:
        if self.remote is not None:
            self.remote.close()


class _RayMpsl:
    """runtime.kind=ray: the clients in `ray.actors` actors (a batched group or handles per slice, as
    in-process), the server and its step loop in one more actor that may ask for a GPU. After every epoch the
    driver copies the trained weights, samples seen and byte counts back into its own parties."""

    def __init__(self, method: Mpsl) -> None:
        cfg = method.cfg
        shards = [c.data for c in method.clients]
        batches = [c.batch_size for c in method.clients]
        self.method = method
        self.clients, ids = client_actors(cfg, len(shards), lambda s: functools.partial(
            _actor_clients, cfg, s, [shards[k] for k in s], [batches[k] for k in s], method.client_template,
            method.task, method.batched), cfg.ray.server_gpus)
        self.server = RayParties([functools.partial(_ServerLoop, cfg, method.server_template, self.clients, ids)],
                                 ["server actor"], 0, cfg.ray.server_gpus, cfg.ray.timeout_s)
        self.traffic = [Traffic() for _ in shards]

    def train_round(self, epoch: int) -> RoundStats:
        [stats] = self.server.call(_server_epoch, epoch)
        [state] = self.server.call(_server_state)
        self.method.server.model.load_state_dict(state)
        for reports in self.clients.call(_client_reports):
            for cid, weights, seen, traffic in reports:
                self.method.clients[cid].model.load_state_dict(weights)
                self.method.clients[cid].samples_seen = seen
                self.traffic[cid] = traffic
        return stats

    def close(self) -> None:
        self.server.close()
        self.clients.close()


def _actor_clients(cfg: Config, ids: list[int], shards: list[SplitData], batches: list[int], template: ClientModel,
                   task: Task, batched: bool) -> ClientGroup:
    """A client actor's party: its slice of clients, built as in-process (same ids, seeds and weights)."""
    torch.manual_seed(cfg.seed)
    clients = [split_client(cfg, k, shard, batch, template, task, not batched)
               for k, shard, batch in zip(ids, shards, batches, strict=True)]
    return _group(clients, batched, cfg, task)


def _client_reports(group: ClientGroup) -> list[tuple[int, dict[str, torch.Tensor], int, Traffic]]:
    """Each client's weights (cloned: a batched client's parameters are views into every client's stack),
    samples seen and bytes so far."""
    return [(c.client_id, {k: v.detach().cpu().clone() for k, v in c.model.state_dict().items()}, c.samples_seen, t)
            for c, t in zip(_group_clients(group), _group_traffic(group), strict=True)]


class _ServerLoop:
    """The server actor's party: the one SplitServer and the step loop, talking to the client actors."""

    def __init__(self, cfg: Config, template: ServerModel, clients: RayParties, ids: list[list[int]]) -> None:
        torch.manual_seed(cfg.seed)  # dropout draws from this process's generator: the same run by run
        self.server = split_server(copy.deepcopy(template), cfg)
        self.group = RayClientGroup(clients, ids)
        self.step = 0


def _server_epoch(loop: _ServerLoop, epoch: int) -> RoundStats:
    stats, loop.step = mpsl_epoch(loop.server, loop.group, epoch, loop.step)
    return stats


def _server_state(loop: _ServerLoop) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in loop.server.model.state_dict().items()}


@register
class SplitFed(Method):
    """SplitFed v1: a server-side model copy per client, both sides FedAvg-ed after every round."""

    name = "splitfed"
    schedule = "pairs"
    grid = staticmethod(_split_grid)
    round_word = "round"

    def __init__(self, cfg: Config, dataset: Dataset) -> None:
        super().__init__(cfg, dataset)
        on_ray = cfg.runtime.kind == "ray"
        self.clients = _clients(self, optimizers=not on_ray)
        # on Ray the pairs train in the client actors; here one server copy is kept for evaluation
        self.servers = [split_server(copy.deepcopy(self.server_template), cfg)
                        for _ in (self.clients[:1] if on_ray else self.clients)]
        self.pairs = None if on_ray else SplitFedPairs(self.clients, self.servers)
        self.remote = None
        self._traffic = [Traffic() for _ in self.clients]
        if on_ray:
            shards = [c.data for c in self.clients]
            batches = [c.batch_size for c in self.clients]
            self.remote, self.slices = client_actors(cfg, len(shards), lambda ids: functools.partial(
                _actor_pairs, cfg, ids, [shards[k] for k in ids], [batches[k] for k in ids], self.client_template,
                self.server_template, self.task))

    def train_round(self, epoch: int, progress: bool) -> RoundStats:
        if self.remote is None:
            total = sum(-(-len(c.data) // c.batch_size) for c in self.clients)
            with progress_bar(f"splitfed round {epoch + 1}", total, progress) as bar:
                stats, updates = self.pairs.train(epoch, bar)
        else:  # each actor steps its pairs; the updates come back in client order
            stats, updates = RoundStats(), []
            for part_stats, part in self.remote.call(_pairs_train, epoch):
                stats.add(part_stats.loss, part_stats.correct, part_stats.count, part_stats.steps)
                updates += part
        weights = [len(c.data) for c in self.clients]
        servers = WeightedAverage()  # on the server itself: no network
        for (server_state, _), w in zip(updates, weights, strict=True):
            servers.add(server_state, w)
        clients = WeightedAverage()  # client sides: a FedAvg exchange through the wire encoding
        for _, sent in updates:
            clients.add(sent.tensors, sent.num_samples)
        server_state, merged = servers.result(), Weights(epoch, 0, clients.result())
        if self.remote is None:
            self.pairs.synchronize(server_state, merged)
        else:
            self._traffic = [t for part in self.remote.call(_pairs_synchronize, server_state, merged) for t in part]
            load_trainable(self.servers[0].model, server_state)
            load_trainable(self.clients[0].model, merged.tensors)
        return stats

    def global_model(self) -> WholeModel:
        return WholeModel(self.clients[0].model, self.servers[0].model)  # all copies equal after a round

    def traffic(self) -> list[Traffic]:
        return self._traffic if self.remote is not None else [h.traffic for h in self.pairs.handles]

    def close(self) -> None:
        if self.remote is not None:
            self.remote.close()


class SplitFedPairs:
    """SplitFed's client-server pairs, each client stepped with its own server copy: in this process, or a
    client actor's slice of them."""

    def __init__(self, clients: list[SplitClient], servers: list[SplitServer]) -> None:
        self.clients = clients
        self.servers = servers
        self.handles = [InProcessHandle(c) for c in clients]
        self.codec = Codec()
        self.steps = [0] * len(clients)

    def train(self, epoch: int, bar: Progress | None = None
              ) -> tuple[RoundStats, list[tuple[dict[str, torch.Tensor], Weights]]]:
        """One round of every pair; the stats, and per client its server copy's trainable weights and the client
        weights that arrived through the wire encoding."""
        for h in self.handles:
            h.start_epoch(epoch)
        stats = RoundStats()
        active = list(range(len(self.clients)))
        while active:  # the pairs are independent; interleaving them stands in for running in parallel
            for k in list(active):
                result = mpsl_step(self.servers[k], [self.handles[k]], self.steps[k])
                if result is None:
                    active.remove(k)
                    continue
                self.steps[k] += 1
                stats.steps += 1
                if bar is not None:
                    bar.update(1)
        for server in self.servers:
            server.end_epoch()
        epoch_metrics(stats, {h.client_id: h.end_epoch() for h in self.handles})
        return stats, [(trainable_state(server.model),
                        carry(self.codec, h.traffic, Weights(epoch, len(c.data), trainable_state(c.model)), "up"))
                       for c, server, h in zip(self.clients, self.servers, self.handles, strict=True)]

    def synchronize(self, server_state: dict[str, torch.Tensor], merged: Weights) -> None:
        """Every server copy takes the averaged server weights; every client receives the averaged client ones."""
        for server in self.servers:
            load_trainable(server.model, server_state)
        for c, h in zip(self.clients, self.handles, strict=True):
            load_trainable(c.model, carry(self.codec, h.traffic, merged, "down").tensors)


def _actor_pairs(cfg: Config, ids: list[int], shards: list[SplitData], batches: list[int], client_template: ClientModel,
                 server_template: ServerModel, task: Task) -> SplitFedPairs:
    torch.manual_seed(cfg.seed)
    clients = [split_client(cfg, k, shard, batch, client_template, task)
               for k, shard, batch in zip(ids, shards, batches, strict=True)]
    return SplitFedPairs(clients, [split_server(copy.deepcopy(server_template), cfg) for _ in clients])


def _pairs_train(pairs: SplitFedPairs, epoch: int) -> tuple[RoundStats, list[tuple[dict[str, torch.Tensor], Weights]]]:
    stats, updates = pairs.train(epoch)
    return stats, [({k: v.detach().cpu() for k, v in state.items()}, sent) for state, sent in updates]


def _pairs_synchronize(pairs: SplitFedPairs, server_state: dict[str, torch.Tensor], merged: Weights) -> list[Traffic]:
    pairs.synchronize(server_state, merged)
    return [h.traffic for h in pairs.handles]
