"""The MPSL global step, written once. Runtimes only supply handles; this is the whole algorithm.

    Z = concat_k z_k                      one server forward over all participating clients
    L = sum_k (b_k / B) L_k               each L_k computed on client k with its own labels
    one backward, one server optimizer step; client k receives exactly dL/dz_k and steps itself

Clients that hold only some modalities are grouped by what they hold: one forward per group, their
gradients summed before the one server step.

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
from mpsl.protocol.messages import CutGrad, FeatureGrad, Features, Tokens, fits_modalities
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


def _group_by_modalities(arrived: list[tuple[ClientHandle, Tokens]], modalities: list[str]) -> list[list[int]]:
    """Indices of the arrived clients grouped by the modalities they sent, in arrival order.

    A client lacking a modality sends only the others (a non-empty subset, in the model's order);
    its group runs through the encoder on the tokens it has: early fusion without the missing
    tokens, late fusion with the missing feature left out of the average.
    """
    groups: dict[tuple[str, ...], list[int]] = {}
    for k, (h, msg) in enumerate(arrived):
        names = tuple(msg.tokens)
        if not fits_modalities(names, modalities):
            raise ProtocolError(f"client {h.client_id} sent modalities {list(names)}, expected {modalities} "
                                "or a non-empty part of them in that order")
        groups.setdefault(names, []).append(k)
    return list(groups.values())


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
    groups = _group_by_modalities(arrived, server.model.modalities)
    sizes = [msg.batch_size for _, msg in arrived]
    total = sum(sizes)

    # one forward per set of modalities held (a single one unless some clients lack a modality)
    forwards: list[tuple[list[int], dict[str, torch.Tensor], torch.Tensor]] = []
    down: list[Features] = [None] * len(arrived)  # type: ignore[list-item]
    for members in groups:
        tokens = {m: torch.cat([arrived[k][1].tokens[m] for k in members]).requires_grad_(True)  # [B_g, T_m, D]
                  for m in arrived[members[0]][1].tokens}
        outputs = server.forward(tokens)  # [B_g, R_g, D] or [B_g, C]
        for k, out in zip(members, outputs.split([sizes[k] for k in members]), strict=True):  # [b_k, ...]
            down[k] = Features(step, out.detach(), sizes[k] / total)
        forwards.append((members, tokens, outputs))
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
    # each reply already carries its weight, so the concatenation is dL/d outputs of each forward
    server.backward_and_step([outputs for _, _, outputs in forwards],
                             [torch.cat([grads[k] for k in members]) for members, _, _ in forwards],  # [B_g, ...]
                             [t for _, tokens, _ in forwards for t in tokens.values()])

    cut: dict[int, dict[str, torch.Tensor]] = {}  # client -> its slice of each modality's gradient [b_k, T_m, D]
    for members, tokens, _ in forwards:
        slices = {m: t.grad.split([sizes[k] for k in members]) for m, t in tokens.items()}
        for i, k in enumerate(members):
            cut[k] = {m: slices[m][i] for m in tokens}
    sends = [(arrived[k][0], CutGrad(step, cut[k], sizes[k] / remaining)) for k in kept]
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
