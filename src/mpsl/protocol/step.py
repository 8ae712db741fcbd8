"""The MPSL global step, written once. Runtimes only supply handles; this is the whole algorithm.

    Z = concat_k z_k                      one server forward over all participating clients
    L = sum_k (b_k / B) L_k               each L_k computed on client k with its own labels
    one backward, one server optimizer step; client k receives exactly dL/dz_k and steps itself
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

from mpsl.errors import ProtocolError
from mpsl.protocol.handle import ClientHandle
from mpsl.protocol.messages import CutGrad, FeatureGrad, Features, Tokens
from mpsl.protocol.server import SplitServer

A = TypeVar("A")
R = TypeVar("R")
MapFn = Callable[[Callable[[A], R], Iterable[A]], Iterable[R]]


@dataclass(frozen=True)
class StepResult:
    client_ids: list[int]
    batch_sizes: list[int]
    loss: float  # the aggregate sum_k (b_k / B) L_k
    correct: int
    count: int


def _sequential(fn: Callable[[A], R], items: Iterable[A]) -> list[R]:
    return [fn(item) for item in items]


def mpsl_step(server: SplitServer, handles: Sequence[ClientHandle], step: int,
              fan_out: MapFn = _sequential) -> StepResult | None:
    """One global step over every client that still has data; None when all are exhausted.

    `fan_out` lets a network runtime talk to clients concurrently; the math does not change.
    """
    offers = list(zip(handles, fan_out(lambda h: h.embed(step), handles), strict=True))
    arrived: list[tuple[ClientHandle, Tokens]] = [(h, t) for h, t in offers if t is not None]
    if not arrived:
        return None
    modalities = server.model.modalities
    for h, msg in arrived:
        if list(msg.tokens) != modalities:
            raise ProtocolError(f"client {h.client_id} sent modalities {list(msg.tokens)}, expected {modalities}")
    sizes = [msg.batch_size for _, msg in arrived]
    total = sum(sizes)

    tokens = {m: torch.cat([msg.tokens[m] for _, msg in arrived]).requires_grad_(True)  # [B, T_m, D]
              for m in modalities}
    outputs = server.forward(tokens)  # [B, M, D] or [B, C]
    down = [Features(step, out.detach(), b / total)
            for out, b in zip(outputs.split(sizes), sizes, strict=True)]  # slice k: [b_k, ...]
    replies: list[FeatureGrad] = list(fan_out(lambda pair: pair[0].features(pair[1]),
                                              [(h, d) for (h, _), d in zip(arrived, down, strict=True)]))
    for (h, _), reply, d in zip(arrived, replies, down, strict=True):
        if reply.grad.shape != d.features.shape:
            raise ProtocolError(f"client {h.client_id}: gradient shape {tuple(reply.grad.shape)}, "
                                f"features were {tuple(d.features.shape)}")
    # each reply already carries the weight b_k / B, so the concatenation is dL/d outputs
    server.backward_and_step(outputs, torch.cat([r.grad for r in replies]))  # [B, ...]

    cut = {m: tokens[m].grad.split(sizes) for m in modalities}  # m -> k-th slice [b_k, T_m, D]
    grads = [CutGrad(step, {m: cut[m][k] for m in modalities}) for k in range(len(arrived))]
    list(fan_out(lambda pair: pair[0].cut_grad(pair[1]), [(h, g) for (h, _), g in zip(arrived, grads, strict=True)]))
    return StepResult(
        client_ids=[h.client_id for h, _ in arrived],
        batch_sizes=sizes,
        loss=sum(d.loss_weight * r.loss for d, r in zip(down, replies, strict=True)),
        correct=sum(r.correct for r in replies),
        count=sum(r.count for r in replies),
    )
