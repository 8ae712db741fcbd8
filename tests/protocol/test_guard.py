"""One client cannot damage the shared encoder: the step leaves out what its guard refuses, before any update."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from mpsl.protocol import FeatureGrad, Features, SplitClient, SplitServer, Tokens, mpsl_step
from mpsl.protocol.guard import Guard, derived_token_bound
from mpsl.runtime import InProcessHandle
from tests.helpers import three_parties, tiny_config

HUGE = 1e30  # finite in float32, far beyond anything a tokenizer or a loss produces


class Hostile(InProcessHandle):
    """An honest client's messages, with its tokens or its feature gradient scaled by `factor` (or, `fill`, a
    gradient whose every value is `factor`)."""

    def __init__(self, client: SplitClient, at: str, factor: float) -> None:
        super().__init__(client)
        self.at, self.factor = at, factor

    def embed(self, step: int) -> Tokens | None:
        msg = super().embed(step)
        if self.at == "tokens" and msg is not None:
            msg = Tokens(msg.client_id, msg.step, {m: t * self.factor for m, t in msg.tokens.items()})
        return msg

    def features(self, msg: Features) -> FeatureGrad:
        reply = super().features(msg)
        if self.at in ("grad", "fill"):
            grad = reply.grad * self.factor if self.at == "grad" else torch.full_like(reply.grad, self.factor)
            reply = FeatureGrad(reply.step, grad, reply.loss, reply.correct, reply.count)
        return reply


def _setup(guard: Guard | None = None):
    """Three clients and a server with Adam, so a poisoned second moment would show in the optimizer state."""
    return three_parties(tiny_config(), lambda params: torch.optim.Adam(params, lr=1e-2), guard)


def _state(server: SplitServer) -> list[torch.Tensor]:
    """Parameters and every optimizer tensor (Adam's moments): what a poisoned step would change."""
    opt = [t for s in server.optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
    return [p.detach().clone() for p in server.model.parameters()] + [t.clone() for t in opt]


def _assert_equal_to_the_step_without_client_1(at: str, factor: float, guard: Guard | None = None) -> None:
    # Prepare: the same start twice; in one, client 1 is hostile, in the other it is absent
    clients, server = _setup(guard)
    ref_clients, ref_server = copy.deepcopy(clients), copy.deepcopy(server)
    handles = [InProcessHandle(clients[0]), Hostile(clients[1], at, factor), InProcessHandle(clients[2])]

    # Execute: two steps, so a poisoned optimizer state would also show in the second update
    results = [mpsl_step(server, handles, step) for step in (0, 1)]
    for step in (0, 1):
        mpsl_step(ref_server, [InProcessHandle(ref_clients[0]), InProcessHandle(ref_clients[2])], step)

    # Assert: client 1 left out of both steps, everything else exactly the two-client run
    for result in results:
        assert result.client_ids == [0, 2] and list(result.contained) == [1], result
    assert all(math.isfinite(float(t.abs().max())) for t in _state(server))
    # float rounding of a forward over more rows, through Adam, moves weights by ~1e-6; a poisoned update
    # (or a second moment at inf, which freezes a weight) moves them by about the learning rate, 1e-2
    for got, want in zip(_state(server), _state(ref_server), strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    for k in (0, 2):
        for got, want in zip(clients[k].model.parameters(), ref_clients[k].model.parameters(), strict=True):
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_huge_finite_tokens_are_left_out_of_the_step_by_the_derived_bound() -> None:
    _assert_equal_to_the_step_without_client_1("tokens", HUGE)


def test_tokens_that_pass_the_bound_but_overflow_the_encoder_are_left_out_and_the_others_forward_again() -> None:
    # a guard that lets any finite token in: the encoder's outputs for client 1's rows turn non-finite
    _assert_equal_to_the_step_without_client_1("tokens", HUGE, Guard(max_token_abs=math.inf, max_grad_abs=1e4))


def test_a_huge_gradient_is_left_out_so_adams_second_moment_stays_finite() -> None:
    _assert_equal_to_the_step_without_client_1("grad", HUGE)


def test_reasons_name_the_bound_that_was_hit() -> None:
    clients, server = _setup()
    result = mpsl_step(server, [InProcessHandle(clients[0]), Hostile(clients[1], "tokens", HUGE)], 0)

    assert "guard.max_token_abs" in result.contained[1]


def test_non_finite_encoder_gradients_skip_the_update_and_no_client_steps() -> None:
    # Prepare: a guard that lets any finite gradient in; 3e38 everywhere overflows once summed in the backward
    clients, server = _setup(Guard(max_token_abs=1e6, max_grad_abs=math.inf))
    before = _state(server)
    client_before = [p.detach().clone() for c in clients for p in c.model.parameters()]
    handles = [InProcessHandle(clients[0]), Hostile(clients[1], "fill", 3e38), InProcessHandle(clients[2])]

    # Execute
    result = mpsl_step(server, handles, 0)
    after_skip = _state(server)
    clients_after_skip = [p.detach().clone() for c in clients for p in c.model.parameters()]
    honest = mpsl_step(server, [InProcessHandle(c) for c in clients], 1)  # the next step goes on normally

    # Assert
    assert result.skipped is not None and not result.stepped
    for got, want in zip(after_skip, before, strict=True):
        assert torch.equal(got, want)
    assert all(torch.equal(p, q) for p, q in zip(clients_after_skip, client_before, strict=True))
    assert honest.stepped and honest.skipped is None


def test_the_derived_token_bound_keeps_layernorms_sum_of_squares_finite() -> None:
    width = 768
    bound = derived_token_bound(width)

    sum_of_squares = torch.full((width,), bound, dtype=torch.float32).square().sum()

    assert torch.isfinite(sum_of_squares) and float(sum_of_squares) < torch.finfo(torch.float32).max / 1e5
    assert 1e14 < bound < 1e16


@pytest.mark.parametrize("factor", [1.0, 50.0])
def test_clipping_to_the_median_scales_only_the_outlier(factor: float) -> None:
    # Prepare: three clients' feature gradients with equal shares; client 2's is `factor` x the others
    guard = Guard(max_token_abs=1e6, max_grad_abs=1e4, clip_to_median=10.0)
    base = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    grads = {0: base.clone(), 1: base.clone() * 2, 2: base.clone() * factor}
    weights = {0: 1 / 3, 1: 1 / 3, 2: 1 / 3}

    # Execute
    factors = guard.clip(grads, weights)

    # Assert: the median norm is client 1's (2x); client 2 is cut to 10 x that only when above it
    torch.testing.assert_close(grads[0], base)
    if factor > 20:
        assert list(factors) == [2]
        torch.testing.assert_close(grads[2].norm(), 10 * 2 * base.norm())
    else:
        assert factors == {} and torch.equal(grads[2], base)
