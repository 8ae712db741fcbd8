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

The server's guard (mpsl.protocol.guard) leaves a client out the same way when its tokens or its
gradient are out of bounds or its rows of the encoder's output are not finite; if the encoder's own
gradients are still not finite, the server skips its update and no client steps.

With server replicas (`server.world`, torch.distributed) each rank runs this step for its own clients: B, B'
and the loss are summed over ranks, the encoder's gradients are summed before the one identical optimizer
step, and a rank left without clients still joins both sums, so the ranks together take the one-process step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from mpsl.errors import ClientUnavailable, ProtocolError
from mpsl.protocol.group import ClientGroup, MapFn, as_group
from mpsl.protocol.handle import ClientHandle
from mpsl.protocol.messages import CutGrad, FeatureGrad, Features, Tokens, fits_modalities
from mpsl.protocol.serde import all_finite
from mpsl.protocol.server import SplitServer
from mpsl.protocol.world import World


@dataclass(frozen=True)
class StepResult:
    client_ids: list[int]  # clients whose gradients the server step used
    batch_sizes: list[int]
    loss: float | None  # the aggregate sum_k (b_k / B) L_k over those clients; None without step metrics
    correct: int | None  # None without step metrics (privacy.step_metrics: clients report per epoch instead)
    count: int
    dropped: list[int] = field(default_factory=list)  # unavailable at some point of the step
    contained: dict[int, str] = field(default_factory=dict)  # client -> why the server's guard left it out
    skipped: str | None = None  # why the server took no update (non-finite gradients, an fp16 overflow)

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


def _totals(world: World | None, *values: float) -> list[float]:
    """The values summed over server replicas; as they are (ints stay ints) without replicas."""
    return list(values) if world is None else world.sum(values)


def mpsl_step(server: SplitServer, clients: ClientGroup | Sequence[ClientHandle], step: int,
              fan_out: MapFn | None = None) -> StepResult | None:
    """One global step over every client that offers a batch; None when no client offers one.

    `clients` is a ClientGroup, or a list of per-client handles (wrapped in a HandleGroup, whose `fan_out`
    lets a network runtime talk to clients concurrently); the math does not change. A client the server's
    guard refuses (tokens or gradient out of bounds, outputs that turn non-finite) is left out like a
    client that dropped out, before anything is updated. With server replicas (`server.world`) each runs
    this for its own clients; the totals are summed over replicas, so the weights are the global ones.
    """
    group = as_group(clients, fan_out)
    guard, world = server.guard, server.world
    offers = group.embed(step)  # client id -> Tokens | None | ClientUnavailable, in the group's order
    unavailable = [cid for cid, t in offers.items() if isinstance(t, ClientUnavailable)]
    contained = {cid: reason for cid, t in offers.items()
                 if isinstance(t, Tokens) and (reason := guard.check_tokens(t)) is not None}
    ids = [cid for cid, t in offers.items() if isinstance(t, Tokens) and cid not in contained]  # arrival order
    sent: list[Tokens] = [offers[cid] for cid in ids]  # type: ignore[misc]
    sizes = [msg.batch_size for msg in sent]

    # one forward per set of modalities held (a single one unless some clients lack a modality)
    forwards: list[tuple[list[int], dict[str, torch.Tensor], torch.Tensor]] = []
    for members in _group_by_modalities(ids, sent, server.model.modalities) if ids else []:
        while members:
            tokens = {m: torch.cat([sent[k].tokens[m] for k in members]).requires_grad_(True)  # [B_g, T_m, D]
                      for m in sent[members[0]].tokens}
            outputs = server.forward(tokens)  # [B_g, R_g, D] or [B_g, C]
            rows = outputs.detach().split([sizes[k] for k in members])  # [b_k, ...] per member
            bad = [k for k, out in zip(members, rows, strict=True) if not all_finite(out)]
            if not bad:
                forwards.append((members, tokens, outputs))
                break
            for k in bad:  # rows are per sample, so the offending client is the one whose rows are non-finite
                contained[ids[k]] = "its tokens made the encoder's outputs non-finite"
            members = [k for k in members if k not in bad]  # forward again without them: 0 x inf is NaN
    live = sorted(k for members, _, _ in forwards for k in members)  # arrival order
    arrived, missing, total = _totals(world, len(live), len(unavailable) + len(contained),
                                      sum(sizes[k] for k in live))  # over every replica
    if not arrived:
        return None if not missing else StepResult([], [], 0.0, 0, 0, unavailable, contained)
    down: dict[int, Features] = {}
    for members, _, outputs in forwards:
        for k, out in zip(members, outputs.split([sizes[k] for k in members]), strict=True):  # [b_k, ...]
            down[k] = Features(step, out.detach(), sizes[k] / total)
    answers = group.features({ids[k]: down[k] for k in live}) if live else {}
    replies = {k: answers[ids[k]] for k in live}
    for k, r in replies.items():
        if isinstance(r, FeatureGrad):
            if r.grad.shape != down[k].features.shape:
                raise ProtocolError(f"client {ids[k]}: gradient shape {tuple(r.grad.shape)}, "
                                    f"features were {tuple(down[k].features.shape)}")
            if (reason := guard.check_grad(r)) is not None:
                contained[ids[k]] = reason
    kept = [k for k in live if isinstance(replies[k], FeatureGrad) and ids[k] not in contained]
    dropped = unavailable + [ids[k] for k in live if not isinstance(replies[k], FeatureGrad)]
    # step metrics come only with privacy.step_metrics: the step reports them when no client withheld them
    withheld = sum(replies[k].loss is None or replies[k].correct is None for k in kept)
    loss_sum = sum(sizes[k] * replies[k].loss for k in kept) if not withheld else 0.0
    correct, count = sum(replies[k].correct for k in kept) if not withheld else 0, sum(replies[k].count for k in kept)
    remaining = sum(sizes[k] for k in kept)
    if world is not None:  # B' and the step's loss and hits, over every replica, in one sum
        remaining, loss_sum, correct, count, withheld = world.sum([remaining, loss_sum, correct, count, withheld])
    metrics = not withheld
    if not remaining:
        return StepResult([], [], 0.0, 0, 0, dropped, contained)
    rescale = total / remaining  # b_k / B -> b_k / B' for the clients that answered (1 when none dropped out)
    grads = {k: replies[k].grad for k in kept}
    if guard.clip_to_median is not None:  # under replicas, the median of each replica's own clients
        grads = {k: g.clone() for k, g in grads.items()}
        guard.clip(grads, {k: down[k].loss_weight for k in kept})
    grads = {k: g if rescale == 1 else g * rescale for k, g in grads.items()}
    # each reply already carries its weight, so the concatenation is dL/d outputs of each forward; a replica
    # without clients in this step passes no forward but still joins the gradient sum
    stepped = server.backward_and_step(
        [outputs for _, _, outputs in forwards],
        [torch.cat([grads.get(k, torch.zeros_like(down[k].features)) for k in members])  # [B_g, ...]
         for members, _, _ in forwards],
        [t for _, tokens, _ in forwards for t in tokens.values()])
    if not stepped:  # nobody steps: no client receives a cut-layer gradient and each goes on to its next batch
        return StepResult([], [], 0.0, 0, 0, dropped, contained, skipped=server.skip_reason)

    cut: dict[int, dict[str, torch.Tensor]] = {}  # client -> its slice of each modality's gradient [b_k, T_m, D]
    for members, tokens, _ in forwards:
        slices = {m: t.grad.split([sizes[k] for k in members]) for m, t in tokens.items()}
        for i, k in enumerate(members):
            cut[k] = {m: slices[m][i] for m in tokens}
    acks = group.cut_grad({ids[k]: CutGrad(step, cut[k], sizes[k] / remaining) for k in kept}) if kept else {}
    late = [cid for cid, ack in acks.items() if isinstance(ack, ClientUnavailable)]
    return StepResult(
        client_ids=[ids[k] for k in kept],
        batch_sizes=[sizes[k] for k in kept],
        loss=(None if not metrics else loss_sum / remaining if world is not None
              else sum(sizes[k] / remaining * replies[k].loss for k in kept)),  # one process: its order of rounding
        correct=int(correct) if metrics else None,
        count=int(count),
        dropped=dropped + late,
        contained=contained,
    )
