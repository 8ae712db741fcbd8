"""Server-side loss aggregation: client k's share of the loss is b_k / B, B counting only arrivals."""

from __future__ import annotations

import copy

import pytest
import torch

from mpsl.data import load_dataset
from mpsl.models import build_split_model
from mpsl.protocol import Features, SplitClient, SplitServer, mpsl_step
from mpsl.runtime import InProcessHandle
from mpsl.tasks import ClassificationTask
from tests.helpers import tiny_config


class Recording(InProcessHandle):
    def __init__(self, client: SplitClient) -> None:
        super().__init__(client)
        self.weights: list[float] = []
        self.losses: list[float] = []

    def features(self, msg: Features):
        self.weights.append(msg.loss_weight)
        reply = super().features(msg)
        self.losses.append(reply.loss)
        return reply


def _clients(sizes: list[int], batch: int) -> tuple[list[SplitClient], SplitServer]:
    cfg = tiny_config()
    data = load_dataset(cfg.data)
    template, server_model = build_split_model(cfg.model, data.spec, seed=0)
    offsets = [sum(sizes[:k]) for k in range(len(sizes))]
    clients = [SplitClient(k, copy.deepcopy(template), data.train.subset(torch.arange(o, o + n)),
                           ClassificationTask(), batch, None, None, seed=k)
               for k, (o, n) in enumerate(zip(offsets, sizes, strict=True))]
    return clients, SplitServer(server_model, None, None)


def test_unequal_batches_get_weights_b_k_over_B() -> None:
    # Prepare: client batch 4, but client 1 holds only 1 sample and client 2 only 3
    clients, server = _clients([8, 1, 3], batch=4)
    handles = [Recording(c) for c in clients]

    # Execute
    result = mpsl_step(server, handles, step=0)

    # Assert
    assert result is not None and result.batch_sizes == [4, 1, 3]
    assert [h.weights[0] for h in handles] == pytest.approx([4 / 8, 1 / 8, 3 / 8])
    assert result.loss == pytest.approx(sum(h.weights[0] * h.losses[0] for h in handles))


def test_exhausted_clients_sit_out_and_weights_renormalize() -> None:
    clients, server = _clients([8, 1, 3], batch=4)
    handles = [Recording(c) for c in clients]

    first = mpsl_step(server, handles, step=0)
    second = mpsl_step(server, handles, step=1)
    third = mpsl_step(server, handles, step=2)

    assert first.client_ids == [0, 1, 2]
    assert second.client_ids == [0] and second.count == 4
    assert handles[0].weights == [0.5, 1.0]
    assert third is None
    assert [c.samples_seen for c in clients] == [8, 1, 3]
