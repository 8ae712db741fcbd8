"""Split-learning methods, both driven by the one MPSL step: `mpsl` and the `splitfed` reference.

    mpsl      one server encoder, one forward/backward over all clients' tokens per step
    splitfed  SplitFed v1: one server copy per client, each stepped with its own client; after each
              round the server copies are averaged on the server and the client models through a
              FedAvg exchange (the per-client server state and the synchronization MPSL removes)
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

from mpsl.config import Config, client_batch_sizes
from mpsl.data import Dataset
from mpsl.errors import ClientUnavailable
from mpsl.experiment.averaging import WeightedAverage, fedavg, load_trainable, trainable_state
from mpsl.experiment.methods.base import (
    Method,
    RoundStats,
    progress_bar,
    register,
)
from mpsl.models import ClientModel, WholeModel
from mpsl.parties import client_shards, split_client, split_server
from mpsl.protocol import ClientGroup, Codec, EpochMetrics, HandleGroup, SplitClient, Weights, mpsl_step
from mpsl.runtime import InProcessHandle, Traffic, carry
from mpsl.runtime.batched import BatchedClients, unsupported


def _clients(method: Method, optimizers: bool = True) -> list[SplitClient]:
    shards = client_shards(method.cfg, method.dataset)
    batches = client_batch_sizes(method.cfg, [len(s) for s in shards])
    return [split_client(method.cfg, k, shard, batch, method.client_template, method.task, optimizers)
            for k, (shard, batch) in enumerate(zip(shards, batches, strict=True))]


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

    def __init__(self, cfg: Config, dataset: Dataset) -> None:
        super().__init__(cfg, dataset)
        # runtime.clients: batched unless the client model needs the loop to keep the math (the reason is printed)
        self.fallback = None if cfg.runtime.clients == "loop" else (
            unsupported(self.client_template, self.task)
            or ("privacy.nopeek needs each client's raw inputs at its backward" if cfg.privacy.nopeek else None))
        if self.fallback is not None:
            print(f"mpsl: runtime.clients=batched cannot run this client model exactly, so clients run one after "
                  f"another: {self.fallback}", flush=True)
        self.batched = cfg.runtime.clients == "batched" and self.fallback is None
        self.clients = _clients(self, optimizers=not self.batched)
        self.server = split_server(copy.deepcopy(self.server_template), cfg)  # the templates stay on the host
        self.handles = [] if self.batched else [InProcessHandle(c) for c in self.clients]
        self.group: ClientGroup = (
            BatchedClients(self.clients, self.task, cfg.train.client_lr, cfg.train.weight_decay, cfg.train.lr_step,
                           cfg.train.lr_gamma) if self.batched else HandleGroup(self.handles))
        self.step = 0

    def train_round(self, epoch: int, progress: bool) -> RoundStats:
        self.group.start_epoch(epoch)
        stats = RoundStats()
        steps = max(-(-len(c.data) // c.batch_size) for c in self.clients)
        with progress_bar(f"mpsl epoch {epoch + 1}", steps, progress) as bar:
            while (result := mpsl_step(self.server, self.group, self.step)) is not None:
                stats.steps += 1
                self.step += 1
                bar.update(1)
                if result.loss is not None:  # step metrics (privacy.step_metrics): a running loss to show
                    bar.set_postfix(loss=f"{result.loss:.3f}", clients=len(result.client_ids))
        self.server.end_epoch()
        epoch_metrics(stats, self.group.end_epoch())
        return stats

    def global_model(self) -> WholeModel:
        """FedAvg of the client models weighted by samples seen: for evaluation only, never sent back."""
        clients = [c.model for c in self.clients]
        merged = clients[0] if len(clients) == 1 else fedavg(clients, [c.samples_seen for c in self.clients])
        return WholeModel(merged, self.server.model)

    def personal_models(self) -> list[ClientModel]:
        return [c.model for c in self.clients] if len(self.clients) > 1 else []

    def traffic(self) -> list[Traffic]:
        return self.group.traffic if isinstance(self.group, BatchedClients) else [h.traffic for h in self.handles]


@register
class SplitFed(Method):
    """SplitFed v1: a server-side model copy per client, both sides FedAvg-ed after every round."""

    name = "splitfed"
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
                    stats.steps += 1
                    bar.update(1)
        for server in self.servers:
            server.end_epoch()
        epoch_metrics(stats, {h.client_id: h.end_epoch() for h in self.handles})
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
