"""The one FLOP counter of mpsl: torch's FlopCounterMode, with attention matmuls reported on their own.

Costs, accounting and benchmarks all count through `count_flops`, so a FLOP means the same thing in
every table. FlopCounterMode has no formula for the CPU's fused attention kernel and counts it as 0;
this module registers torch's own SDPA formulas for it, so attention is counted on every backend.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch.utils.flop_counter import (
    FlopCounterMode,
    register_flop_formula,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

R = TypeVar("R")
ATTENTION_OPS = ("bmm", "scaled_dot_product")  # attention matmuls: eager (bmm) or fused kernels


_aten = torch.ops.aten
_CPU_SDPA = getattr(_aten, "_scaled_dot_product_flash_attention_for_cpu", None)
_CPU_SDPA_BACKWARD = getattr(_aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)

if _CPU_SDPA is not None:
    @register_flop_formula(_CPU_SDPA)
    def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        """QK^T and the attention-weighted sum of V, as torch counts them for the CUDA kernels."""
        return sdpa_flop_count(query_shape, key_shape, value_shape)

if _CPU_SDPA_BACKWARD is not None:
    @register_flop_formula(_CPU_SDPA_BACKWARD)
    def _cpu_sdpa_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                                 **kwargs) -> int:
        return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


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
