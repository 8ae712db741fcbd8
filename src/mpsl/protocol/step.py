"""The MPSL global step, written once. Runtimes only supply handles; this is the whole algorithm.

    Z = concat_k z_k                      one server forward over all participating clients
    L = sum_k (b_k / B) L_k               each L_k computed on client k with its own labels
    one backward, one server optimizer step; client k receives exactly dL/dz_k and steps itself

A client that becomes unavailable after sending its tokens is dropped from the step: its rows get
no gradient and the others' shares are renormalized to b_k / B' over the B' samples that remain,
so the update is exactly the step the remaining clients would have taken alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import torch

from mpsl.errors import ClientUnavailable, ProtocolError
from mpsl.protocol.handle import ClientHandle
from mpsl.protocol.messages import CutGrad, FeatureGrad, Features, Tokens
from mpsl.protocol.server import SplitServer

A = TypeVar("A")
R = TypeVar("R")
MapFn = Callable[[Callable[[A], R], Iterable[A]], Iterable[R]]


@dataclass(frozen=True)
class StepResult:
    client_ids: list[int]  # clients whose gradients the server step used
    batch_sizes: list[int]
    loss: float  # the aggregate sum_k (b_k / B) L_k over those clients
    correct: int
    count: int
    dropped: list[int] = field(default_factory=list)  # unavailable at some point of the step

    @property
    def stepped(self) -> bool:
        return bool(self.client_ids)


def _sequential(fn: Callable[[A], R], items: Iterable[A]) -> list[R]:
    return [fn(item) for item in items]


def _attempt(fn: Callable[[A], R]) -> Callable[[A], R | ClientUnavailable]:
    def call(item: A) -> R | ClientUnavailable:
        try:
            return fn(item)
        except ClientUnavailable as exc:
            return exc

    return call


def mpsl_step(server: SplitServer, handles: Sequence[ClientHandle], step: int,
              fan_out: MapFn = _sequential) -> StepResult | None:
    """One global step over every client that offers a batch; None when no client offers one.

    `fan_out` lets a network runtime talk to clients concurrently; the math does not change.
    """
    offers = list(fan_out(_attempt(lambda h: h.embed(step)), handles))
    arrived: list[tuple[ClientHandle, Tokens]] = [(h, t) for h, t in zip(handles, offers, strict=True)
                                                   if isinstance(t, Tokens)]
    unavailable = [h.client_id for h, t in zip(handles, offers, strict=True) if isinstance(t, ClientUnavailable)]
    if not arrived:
        return None if not unavailable else StepResult([], [], 0.0, 0, 0, unavailable)
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
    replies = list(fan_out(_attempt(lambda pair: pair[0].features(pair[1])),
                           [(h, d) for (h, _), d in zip(arrived, down, strict=True)]))
    kept = [k for k, r in enumerate(replies) if isinstance(r, FeatureGrad)]
    dropped = unavailable + [arrived[k][0].client_id for k, r in enumerate(replies) if not isinstance(r, FeatureGrad)]
    if not kept:
        return StepResult([], [], 0.0, 0, 0, dropped)
    for k in kept:
        if replies[k].grad.shape != down[k].features.shape:
            raise ProtocolError(f"client {arrived[k][0].client_id}: gradient shape {tuple(replies[k].grad.shape)}, "
                                f"features were {tuple(down[k].features.shape)}")
    remaining = sum(sizes[k] for k in kept)
    rescale = total / remaining  # b_k / B -> b_k / B' for the clients that answered
    grads = [replies[k].grad * rescale if k in kept else torch.zeros_like(down[k].features)
             for k in range(len(arrived))]
    # each reply already carries its weight, so the concatenation is dL/d outputs
    server.backward_and_step(outputs, torch.cat(grads), list(tokens.values()))  # [B, ...]

    cut = {m: tokens[m].grad.split(sizes) for m in modalities}  # m -> k-th slice [b_k, T_m, D]
    sends = [(arrived[k][0], CutGrad(step, {m: cut[m][k] for m in modalities}, sizes[k] / remaining)) for k in kept]
    late = [h.client_id for (h, _), r in zip(sends, fan_out(_attempt(lambda p: p[0].cut_grad(p[1])), sends),
                                             strict=True) if isinstance(r, ClientUnavailable)]
    return StepResult(
        client_ids=[arrived[k][0].client_id for k in kept],
        batch_sizes=[sizes[k] for k in kept],
        loss=sum(sizes[k] / remaining * replies[k].loss for k in kept),
        correct=sum(replies[k].correct for k in kept),
        count=sum(replies[k].count for k in kept),
        dropped=dropped + late,
    )
