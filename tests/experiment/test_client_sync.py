"""train.client_sync_every: MPSL's clients are averaged every k steps, the exchange counted on the wire."""

from __future__ import annotations

import pytest
import torch

from mpsl.data import load_dataset
from mpsl.experiment.averaging import trainable_state
from mpsl.experiment.methods.split_learning import Mpsl
from mpsl.protocol import Weights, encoded_nbytes
from tests.helpers import tiny_config


def _trained(*overrides: str) -> Mpsl:
    cfg = tiny_config("partition.kind=iid", *overrides)
    method = Mpsl(cfg, load_dataset(cfg.data))
    method.train_round(0, progress=False)
    return method


@pytest.mark.parametrize("clients", ["batched", "loop"])
def test_synced_every_step_all_clients_end_equal_and_pay_two_model_transfers_per_sync(clients: str) -> None:
    # Execute: 8 steps (3 clients x 32 samples, batch 4), a sync after each
    synced = _trained("train.client_sync_every=1", f"runtime.clients={clients}")
    alone = _trained(f"runtime.clients={clients}")

    # Assert: one model for all, and 8 syncs' worth of messages and bytes more per client each way (the other
    # messages' headers carry the step's loss as text, whose length differs by a few bytes between the runs)
    states = [trainable_state(c.model) for c in synced.clients]
    for state in states[1:]:
        for name, tensor in state.items():
            assert torch.equal(tensor, states[0][name]), name
    per_sync = encoded_nbytes(Weights(0, 32, states[0]))
    for with_sync, without in zip(synced.traffic(), alone.traffic(), strict=True):
        assert with_sync.messages - without.messages == 2 * 8
        assert with_sync.up - without.up == pytest.approx(8 * per_sync, abs=64)
        assert with_sync.down - without.down == pytest.approx(8 * encoded_nbytes(Weights(0, 0, states[0])), abs=64)


def test_batched_and_loop_clients_sync_to_the_same_weights() -> None:
    batched = _trained("train.client_sync_every=3")
    loop = _trained("train.client_sync_every=3", "runtime.clients=loop")

    for a, b in zip(batched.clients, loop.clients, strict=True):
        for (name, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
            torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-5, msg=name)
    assert any(not torch.equal(x, y) for x, y in zip(trainable_state(batched.clients[0].model).values(),
                                                     trainable_state(_trained().clients[0].model).values(),
                                                     strict=True))  # the syncs changed the training
