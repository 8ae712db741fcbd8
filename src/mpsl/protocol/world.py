"""What the step needs from its server replicas (torch.distributed, mpsl.runtime.distributed): a sum over ranks.

With K server replicas each runs the step for its own share of the clients. Two things make the K partial
steps one step: the totals (B, B', the loss) are summed over ranks before any weight b_k / B is formed, and
the encoder's gradients are summed (not averaged: each rank's gradient already carries the global weights
b_k / B) before every replica takes the same optimizer step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch


class World(Protocol):
    rank: int  # this replica, 0 .. size - 1
    size: int  # number of server replicas

    def sum(self, values: Sequence[float]) -> list[float]:
        """Each value summed over every rank (float64: sample counts stay exact)."""

    def sum_grads(self, params: Sequence[torch.Tensor]) -> None:
        """Every rank's `.grad` of `params` becomes the sum over ranks; a gradient no rank has stays None."""
