"""The gRPC path carries the same privacy defenses: clients running encoder blocks of their own and noising
their tokens and gradients over the network train exactly what the in-process simulation trains, and the server
logs only per-epoch metrics."""

from __future__ import annotations

import time

import pytest
import torch

from mpsl.data import load_dataset
from mpsl.experiment.methods.split_learning import Mpsl
from mpsl.runtime.network.events import EpochEnd, Finished, Step
from tests.helpers import tiny_config
from tests.runtime.network_helpers import HonestClients, LiveServer

DEFENSES = ["privacy.grad_clip=0.5", "privacy.grad_noise=0.7", "privacy.token_clip=3", "privacy.token_noise=0.2",
            "model.client_blocks=1", "model.encoder.trainable_blocks=2"]  # the deeper cut: a trained block per client


def test_grpc_clients_with_every_noise_mechanism_and_a_deeper_cut_train_what_the_simulation_trains(tmp_path) -> None:
    # Prepare
    cfg = tiny_config("deploy.min_participants=3", "deploy.step_timeout=20", f"out_dir={tmp_path}", *DEFENSES)
    live = LiveServer(cfg)
    try:
        # Execute
        HonestClients(cfg, live.port, [0, 1, 2], tmp_path).finish(timeout=120)
        deadline = time.monotonic() + 20
        while not any(isinstance(e, Finished) for e in live.events):
            assert time.monotonic() < deadline, live.events
            time.sleep(0.05)
        reference = Mpsl(cfg.replace(**{"runtime.clients": "loop"}), load_dataset(cfg.data))
        stats = reference.train_round(0, progress=False)

        # Assert: the same weights, and the epoch's metrics arrive once, without per-step losses
        for (name, p), q in zip(live.runtime.server.model.named_parameters(), reference.server.model.parameters(),
                                strict=True):
            torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4, msg=name)
        steps = [e for e in live.events if isinstance(e, Step)]
        assert len(steps) == reference.step and all(e.loss is None for e in steps)
        (end,) = [e for e in live.events if isinstance(e, EpochEnd)]
        assert end.loss == pytest.approx(stats.loss, rel=1e-5) and end.accuracy == pytest.approx(stats.accuracy)
    finally:
        live.close()
