"""How the MPSL step talks to one client, whatever carries the messages (a call, gRPC, a Ray actor).

A handle whose client cannot answer (timeout, broken connection) raises ClientUnavailable from
embed or features; the step then goes on without that client for this step.
"""

from __future__ import annotations

from typing import Protocol

from mpsl.protocol.messages import CutGrad, EpochMetrics, FeatureGrad, Features, Tokens


class ClientHandle(Protocol):
    client_id: int

    @property
    def epoch(self) -> int | None:
        """The epoch the client was last started on; None before its first."""

    @property
    def exhausted(self) -> bool:
        """True once the client has said its data for this epoch is used up."""

    def start_epoch(self, epoch: int) -> None:
        """Reshuffle local data; the client takes part in steps until its data runs out."""

    def embed(self, step: int) -> Tokens | None:
        """Tokenize the next local mini-batch; None once the client's data is exhausted this epoch."""

    def features(self, msg: Features) -> FeatureGrad:
        """Run the head (if any) and the loss on the client's own labels; return the feature gradient."""

    def cut_grad(self, msg: CutGrad) -> None:
        """Backpropagate the cut-layer gradient through the tokenizers and step the client optimizer."""

    def end_epoch(self) -> EpochMetrics:
        """Advance the client's learning-rate schedule; its training metrics over the epoch."""
