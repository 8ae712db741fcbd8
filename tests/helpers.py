"""Shared test helpers: a tiny random-init model on the in-memory synthetic dataset."""

from __future__ import annotations

from collections.abc import Mapping

from mpsl.config import Config, load_config
from mpsl.errors import ClientUnavailable

TINY = [
    "data.name=synthetic-av", "data.train_size=96", "data.test_size=48",
    "model.encoder.source=random", "model.encoder.width=32", "model.encoder.depth=2",
    "model.encoder.heads=2", "model.image.patch=[4,4]", "model.audio.patch=[4,4]", "model.audio.stride=null",
    "num_clients=3", "train.batch_size=12", "train.epochs=1", "progress=false",
]


def tiny_config(*overrides: str) -> Config:
    return load_config(None, [*TINY, *overrides])



def adam(module):
    """A plain Adam over the trainable parameters, for exact step comparisons."""
    import torch

    return torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=1e-2)


def split_parties(template, server_model, shards, task):
    """One SplitClient per shard (copies of the template, each batch = the whole shard) and one SplitServer,
    each with its own Adam: the split side of a split-equals-unsplit comparison."""
    import copy

    from mpsl.protocol import SplitClient, SplitServer

    clients = [SplitClient(k, copy.deepcopy(template), s, task, len(s), None, None, seed=k)
               for k, s in enumerate(shards)]
    for c in clients:
        c.optimizer = adam(c.model)
    server = SplitServer(copy.deepcopy(server_model), None, None)
    server.optimizer = adam(server.model)
    return clients, server


class Vanishes:
    """Any client group, with one client that disappears before answering its features at one step."""

    def __init__(self, inner, client_id: int, step: int) -> None:
        self.inner, self.client_id, self.step = inner, client_id, step

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def features(self, msgs: Mapping) -> dict:
        if self.client_id not in msgs or next(iter(msgs.values())).step != self.step:
            return self.inner.features(msgs)
        answers = self.inner.features({cid: m for cid, m in msgs.items() if cid != self.client_id})
        return {**answers, self.client_id: ClientUnavailable(f"client {self.client_id} disconnected")}

    def cut_grad(self, msgs: Mapping) -> dict:
        return self.inner.cut_grad(msgs)


def three_parties(cfg: Config, optimizer, guard=None):
    """Three clients of 8 samples (4 per step) and a server, each with `optimizer(params)`, at epoch 0: the
    parties of the step-level protocol tests."""
    import copy

    import torch

    from mpsl.data import load_dataset
    from mpsl.models import build_split_model
    from mpsl.protocol import SplitClient, SplitServer
    from mpsl.tasks import ClassificationTask

    data = load_dataset(cfg.data)
    template, server_model = build_split_model(cfg.model, data.spec, seed=0)
    clients = []
    for k in range(3):
        model = copy.deepcopy(template)
        clients.append(SplitClient(k, model, data.train.subset(torch.arange(8 * k, 8 * k + 8)), ClassificationTask(),
                                   4, optimizer(model.parameters()), None, seed=k))
    server = SplitServer(server_model, optimizer(server_model.parameters()), None, guard=guard)
    for c in clients:
        c.start_epoch(0)
    return clients, server
