"""How the MPSL step reaches all of its clients at once: a group with batched verbs.

The step speaks to a `ClientGroup`; each verb takes and returns one entry per client id, in the group's
order. A group of per-client handles (in-process calls, gRPC stubs) is a `HandleGroup`; a simulation can
instead run all of its clients as one batched computation (mpsl.runtime.batched) behind the same verbs.
A client that cannot answer is reported as ClientUnavailable in its entry, never raised.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol, TypeVar

from mpsl.errors import ClientUnavailable
from mpsl.protocol.handle import ClientHandle
from mpsl.protocol.messages import CutGrad, EpochMetrics, FeatureGrad, Features, Tokens

A = TypeVar("A")
R = TypeVar("R")
MapFn = Callable[[Callable[[A], R], Iterable[A]], Iterable[R]]
Offer = Tokens | None | ClientUnavailable  # a client's tokens, None once its data is exhausted this epoch


class ClientGroup(Protocol):
    def start_epoch(self, epoch: int) -> None:
        """Every client reshuffles its local data."""

    def embed(self, step: int) -> dict[int, Offer]:
        """Client id -> its next mini-batch's tokens (or None, or ClientUnavailable), for every client."""

    def features(self, msgs: Mapping[int, Features]) -> dict[int, FeatureGrad | ClientUnavailable]:
        """Client id -> the gradient of its weighted loss w.r.t. the features it was sent."""

    def cut_grad(self, msgs: Mapping[int, CutGrad]) -> dict[int, ClientUnavailable | None]:
        """Each addressed client backpropagates its cut-layer gradient and steps; None when it did."""

    def end_epoch(self) -> dict[int, EpochMetrics | ClientUnavailable]:
        """Every client advances its learning-rate schedule and reports its metrics over the epoch."""


def sequential(fn: Callable[[A], R], items: Iterable[A]) -> list[R]:
    return [fn(item) for item in items]


def _attempt(fn: Callable[[A], R]) -> Callable[[A], R | ClientUnavailable]:
    def call(item: A) -> R | ClientUnavailable:
        try:
            return fn(item)
        except ClientUnavailable as exc:
            return exc

    return call


class HandleGroup:
    """Per-client handles as a group: each verb fans out one call per client (`fan_out` lets a network
    runtime make them concurrently) and turns ClientUnavailable into that client's entry."""

    def __init__(self, handles: Sequence[ClientHandle], fan_out: MapFn = sequential) -> None:
        self.handles = list(handles)
        self.fan_out = fan_out
        self._by_id = {h.client_id: h for h in self.handles}
        if len(self._by_id) != len(self.handles):
            raise ValueError(f"client ids repeat in {[h.client_id for h in self.handles]}")

    def start_epoch(self, epoch: int) -> None:
        for h in self.handles:
            h.start_epoch(epoch)

    def embed(self, step: int) -> dict[int, Offer]:
        offers = self.fan_out(_attempt(lambda h: h.embed(step)), self.handles)
        return {h.client_id: offer for h, offer in zip(self.handles, offers, strict=True)}

    def features(self, msgs: Mapping[int, Features]) -> dict[int, FeatureGrad | ClientUnavailable]:
        ids = list(msgs)
        replies = self.fan_out(_attempt(lambda cid: self._by_id[cid].features(msgs[cid])), ids)
        return dict(zip(ids, replies, strict=True))

    def cut_grad(self, msgs: Mapping[int, CutGrad]) -> dict[int, ClientUnavailable | None]:
        ids = list(msgs)
        replies = self.fan_out(_attempt(lambda cid: self._by_id[cid].cut_grad(msgs[cid])), ids)
        return dict(zip(ids, replies, strict=True))

    def end_epoch(self) -> dict[int, EpochMetrics | ClientUnavailable]:
        return {h.client_id: _attempt(lambda handle: handle.end_epoch())(h) for h in self.handles}


def as_group(clients: ClientGroup | Sequence[ClientHandle], fan_out: MapFn | None = None) -> ClientGroup:
    """A list of handles becomes a HandleGroup (today's per-client calls); a group is used as it is."""
    if isinstance(clients, Sequence):
        return HandleGroup(clients, fan_out or sequential)
    if fan_out is not None:
        raise TypeError("fan_out applies to a list of handles; a ClientGroup reaches its clients itself")
    return clients
