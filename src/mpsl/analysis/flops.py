"""The one FLOP counter of mpsl: torch's FlopCounterMode, with attention matmuls reported on their own.

Costs, accounting and benchmarks all count through `count_flops`, so a FLOP means the same thing in
every table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from torch.utils.flop_counter import FlopCounterMode

R = TypeVar("R")
ATTENTION_OPS = ("bmm", "scaled_dot_product")  # attention matmuls: eager (bmm) or fused kernels


@dataclass(frozen=True)
class FlopCount:
    total: float
    attention: float  # the score and value products; fvcore-style counts leave these out

    @property
    def without_attention(self) -> float:
        return self.total - self.attention

    def __add__(self, other: FlopCount) -> FlopCount:
        return FlopCount(self.total + other.total, self.attention + other.attention)


def count_flops(fn: Callable[[], R]) -> tuple[R, FlopCount]:
    """fn()'s result and the FLOPs it ran (forward, or backward when fn calls it)."""
    with FlopCounterMode(display=False) as counter:
        result = fn()
    ops = counter.get_flop_counts().get("Global", {})
    attention = sum(v for op, v in ops.items() if any(a in str(op) for a in ATTENTION_OPS))
    return result, FlopCount(float(sum(ops.values())), float(attention))
