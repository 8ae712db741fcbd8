"""The in-process runtime carries real encoded messages and counts exactly what crosses the cut."""

from __future__ import annotations

import torch

from mpsl.data import load_dataset
from mpsl.experiment.methods.split_learning import Mpsl
from mpsl.protocol import mpsl_step
from tests.helpers import tiny_config


def _one_epoch(head: str):
    cfg = tiny_config(f"model.head={head}", "partition.kind=iid", "runtime.clients=loop")  # the per-client handles
    data = load_dataset(cfg.data)
    sim = Mpsl(cfg, data)
    for h in sim.handles:
        h.start_epoch(0)
    steps = 0
    while mpsl_step(sim.server, sim.handles, steps) is not None:
        steps += 1
    return cfg, sim, steps


def test_bytes_equal_numel_times_element_size_of_what_crosses_the_cut() -> None:
    # Prepare / Execute: 96 samples over 3 IID clients, b = ceil(12 / 3) = 4 -> 8 steps each
    cfg, sim, steps = _one_epoch("client")

    # Assert: per sample, up = tokens [T, D] + feature grads [M, D]; down = features [M, D] + dL/dz [T, D]
    width, modalities = cfg.model.encoder.width, 2
    tokens_per_sample = (1 + (8 // 4) * (8 // 4)) + (1 + (8 // 4) * (12 // 4))  # image 1+4, audio 1+6
    for handle, client in zip(sim.handles, sim.clients, strict=True):
        n = len(client.data)
        expected = 4 * n * (tokens_per_sample * width + modalities * width)
        assert handle.traffic.payload_up == expected
        assert handle.traffic.payload_down == expected
        framing_up = handle.traffic.up - handle.traffic.payload_up
        assert 0 < framing_up < 0.05 * expected
        assert handle.traffic.messages == 4 * -(-n // 4)  # four messages per step taken part in
    assert steps == 8


def test_server_head_sends_logits_down_and_their_gradient_up() -> None:
    cfg, sim, _ = _one_epoch("server")

    width, classes = cfg.model.encoder.width, 4
    tokens_per_sample = 5 + 7
    client = sim.clients[0]
    n = len(client.data)
    assert sim.handles[0].traffic.payload_down == 4 * n * (classes + tokens_per_sample * width)
    assert sim.handles[0].traffic.payload_up == 4 * n * (tokens_per_sample * width + classes)


def test_decoded_messages_share_no_memory_or_graph_with_the_sender() -> None:
    cfg = tiny_config("runtime.clients=loop")
    sim = Mpsl(cfg, load_dataset(cfg.data))
    handle, client = sim.handles[0], sim.clients[0]

    sent = handle.embed(step=0)

    raw = client._pending[1]  # the client's own graph-carrying tokens
    for m, t in sent.tokens.items():
        assert t.grad_fn is None and not t.requires_grad
        assert t.untyped_storage().data_ptr() != raw[m].untyped_storage().data_ptr()
        assert torch.equal(t, raw[m].detach())
