"""The MPSL global step, written once. Runtimes only supply a client group (or per-client handles); this is
the whole algorithm.

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

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from mpsl.errors import ClientUnavailable, ProtocolError
from mpsl.protocol.group import ClientGroup, MapFn, as_group
from mpsl.protocol.handle import ClientHandle
from mpsl.protocol.messages import CutGrad, FeatureGrad, Features, Tokens, fits_modalities
from mpsl.protocol.server import SplitServer


@dataclass(frozen=True)
class StepResult:
    client_ids: list[int]  # clients whose gradients the server step used
    batch_sizes: list[int]
    loss: float | None  # the aggregate sum_k (b_k / B) L_k over those clients; None without step metrics
    correct: int | None  # None without step metrics (privacy.step_metrics: clients report per epoch instead)
    count: int
    dropped: list[int] = field(default_factory=list)  # unavailable at some point of the step

    @property
    def stepped(self) -> bool:
        return bool(self.client_ids)


def _group_by_modalities(ids: list[int], sent: list[Tokens], modalities: list[str]) -> list[list[int]]:
    """Indices of the arrived clients grouped by the modalities they sent, in arrival order.

    A client lacking a modality sends only the others (a non-empty subset, in the model's order);
    its group runs through the encoder on the tokens it has: early fusion without the missing
    tokens, late fusion with the missing feature left out of the average.
    """
    groups: dict[tuple[str, ...], list[int]] = {}
    for k, (cid, msg) in enumerate(zip(ids, sent, strict=True)):
        names = tuple(msg.tokens)
        if not fits_modalities(names, modalities):
            raise ProtocolError(f"client {cid} sent modalities {list(names)}, expected {modalities} "
                                "or a non-empty part of them in that order")
        groups.setdefault(names, []).append(k)
    return list(groups.values())


def mpsl_step(server: SplitServer, clients: ClientGroup | Sequence[ClientHandle], step: int,
              fan_out: MapFn | None = None) -> StepResult | None:
    """One global step over every client that offers a batch; None when no client offers one.

    `clients` is a ClientGroup, or a list of per-client handles (wrapped in a HandleGroup, whose `fan_out`
    lets a network runtime talk to clients concurrently); the math does not change.
    """
    group = as_group(clients, fan_out)
    offers = group.embed(step)  # client id -> Tokens | None | ClientUnavailable, in the group's order
    ids = [cid for cid, t in offers.items() if isinstance(t, Tokens)]  # arrival order
    sent: list[Tokens] = [offers[cid] for cid in ids]  # type: ignore[misc]
    unavailable = [cid for cid, t in offers.items() if isinstance(t, ClientUnavailable)]
    if not ids:
        return None if not unavailable else StepResult([], [], 0.0, 0, 0, unavailable)
    groups = _group_by_modalities(ids, sent, server.model.modalities)
    sizes = [msg.batch_size for msg in sent]
    total = sum(sizes)

    # one forward per set of modalities held (a single one unless some clients lack a modality)
    forwards: list[tuple[list[int], dict[str, torch.Tensor], torch.Tensor]] = []
    down: list[Features] = [None] * len(ids)  # type: ignore[list-item]
    for members in groups:
        tokens = {m: torch.cat([sent[k].tokens[m] for k in members]).requires_grad_(True)  # [B_g, T_m, D]
                  for m in sent[members[0]].tokens}
        outputs = server.forward(tokens)  # [B_g, R_g, D] or [B_g, C]
        for k, out in zip(members, outputs.split([sizes[k] for k in members]), strict=True):  # [b_k, ...]
            down[k] = Features(step, out.detach(), sizes[k] / total)
        forwards.append((members, tokens, outputs))
    answers = group.features({cid: d for cid, d in zip(ids, down, strict=True)})
    replies = [answers[cid] for cid in ids]
    kept = [k for k, r in enumerate(replies) if isinstance(r, FeatureGrad)]
    dropped = unavailable + [ids[k] for k, r in enumerate(replies) if not isinstance(r, FeatureGrad)]
    if not kept:
        return StepResult([], [], 0.0, 0, 0, dropped)
    for k in kept:
        if replies[k].grad.shape != down[k].features.shape:
            raise ProtocolError(f"client {ids[k]}: gradient shape {tuple(replies[k].grad.shape)}, "
                                f"features were {tuple(down[k].features.shape)}")
    remaining = sum(sizes[k] for k in kept)
    rescale = total / remaining  # b_k / B -> b_k / B' for the clients that answered (1 when none dropped out)
    grads = [(replies[k].grad if rescale == 1 else replies[k].grad * rescale) if isinstance(replies[k], FeatureGrad)
             else torch.zeros_like(down[k].features) for k in range(len(ids))]
    # each reply already carries its weight, so the concatenation is dL/d outputs of each forward
    server.backward_and_step([outputs for _, _, outputs in forwards],
                             [torch.cat([grads[k] for k in members]) for members, _, _ in forwards],  # [B_g, ...]
                             [t for _, tokens, _ in forwards for t in tokens.values()])

    cut: dict[int, dict[str, torch.Tensor]] = {}  # client -> its slice of each modality's gradient [b_k, T_m, D]
    for members, tokens, _ in forwards:
        slices = {m: t.grad.split([sizes[k] for k in members]) for m, t in tokens.items()}
        for i, k in enumerate(members):
            cut[k] = {m: slices[m][i] for m in tokens}
    acks = group.cut_grad({ids[k]: CutGrad(step, cut[k], sizes[k] / remaining) for k in kept})
    late = [cid for cid, ack in acks.items() if isinstance(ack, ClientUnavailable)]
    metrics = all(replies[k].loss is not None and replies[k].correct is not None for k in kept)
    return StepResult(
        client_ids=[ids[k] for k in kept],
        batch_sizes=[sizes[k] for k in kept],
        loss=sum(sizes[k] / remaining * replies[k].loss for k in kept) if metrics else None,
        correct=sum(replies[k].correct for k in kept) if metrics else None,
        count=sum(replies[k].count for k in kept),
        dropped=dropped + late,
    )
