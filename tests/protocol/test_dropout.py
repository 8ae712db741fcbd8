"""A client that becomes unavailable mid-step is dropped: the step equals one without it."""

from __future__ import annotations

import copy

import torch

from mpsl.errors import ClientUnavailable
from mpsl.protocol import Features, SplitClient, mpsl_step
from mpsl.runtime import InProcessHandle
from tests.helpers import three_parties, tiny_config


class Vanishing(InProcessHandle):
    """Answers embed, then disappears before returning its feature gradient (or before embed)."""

    def __init__(self, client: SplitClient, at: str) -> None:
        super().__init__(client)
        self.at = at

    def embed(self, step: int):
        if self.at == "embed":
            raise ClientUnavailable(f"client {self.client_id} timed out")
        return super().embed(step)

    def features(self, msg: Features):
        raise ClientUnavailable(f"client {self.client_id} disconnected")


def _setup(head: str):
    """Three clients and a server, with SGD so that any wrong gradient scale shows in the weights."""
    return three_parties(tiny_config(f"model.head={head}"), lambda params: torch.optim.SGD(params, lr=0.5))


def _params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def test_a_client_lost_before_its_gradient_leaves_exactly_the_step_of_the_others() -> None:
    for head in ("client", "server"):
        # Prepare: the same start twice; in one, client 1 vanishes after sending its tokens
        clients, server = _setup(head)
        ref_clients, ref_server = copy.deepcopy(clients), copy.deepcopy(server)
        handles = [InProcessHandle(clients[0]), Vanishing(clients[1], at="features"), InProcessHandle(clients[2])]

        # Execute
        result = mpsl_step(server, handles, step=0)
        reference = mpsl_step(ref_server, [InProcessHandle(ref_clients[0]), InProcessHandle(ref_clients[2])], 0)

        # Assert: shares renormalized to 4/8 each, so the update is the two-client step
        assert result.client_ids == [0, 2] and result.dropped == [1] and result.count == 8
        assert result.loss == reference.loss
        for got, want in zip(_params(server.model), _params(ref_server.model), strict=True):
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
        for k in (0, 2):
            for got, want in zip(_params(clients[k].model), _params(ref_clients[k].model), strict=True):
                torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_a_client_that_does_not_answer_embed_sits_the_step_out() -> None:
    clients, server = _setup("client")
    handles = [InProcessHandle(clients[0]), Vanishing(clients[1], at="embed"), InProcessHandle(clients[2])]

    result = mpsl_step(server, handles, step=0)

    assert result.client_ids == [0, 2] and result.dropped == [1]
    assert clients[1].samples_seen == 0 and clients[0].samples_seen == 4


def test_when_every_client_is_unavailable_the_server_does_not_change() -> None:
    clients, server = _setup("client")
    before = _params(server.model)

    result = mpsl_step(server, [Vanishing(c, at="features") for c in clients], step=0)

    assert result is not None and not result.stepped and result.dropped == [0, 1, 2]
    assert all(torch.equal(a, b) for a, b in zip(before, _params(server.model), strict=True))


def test_a_client_restored_from_its_state_continues_exactly_where_it_was() -> None:
    # Prepare: client 0 takes a step, its state is saved, then it takes another
    clients, server = _setup("client")
    mpsl_step(server, [InProcessHandle(clients[0])], step=0)
    saved = copy.deepcopy(clients[0].state_dict())
    fresh = copy.deepcopy(clients[0])
    fresh.start_epoch(5)  # a different data order and epoch, to be overwritten
    expected = clients[0].embed(step=1)

    # Execute: a restarted client (another copy, scrambled) loads the saved state
    with torch.no_grad():
        for p in fresh.model.parameters():
            p.add_(1.0)
    fresh.load_state_dict(saved)
    got = fresh.embed(step=1)

    # Assert: same next mini-batch, same tokens
    assert fresh.samples_seen == 4 and fresh.epoch == 0
    for m in expected.tokens:
        assert torch.equal(got.tokens[m], expected.tokens[m])
