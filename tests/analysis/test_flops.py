"""The FLOP counter counts attention on every backend and agrees with the analytic count of a ViT."""

from __future__ import annotations

import pytest
import torch

from mpsl.analysis.flops import count_flops
from mpsl.config import EncoderConfig
from mpsl.models import build_encoder

WIDTH, DEPTH, HEADS, TOKENS, BATCH = 32, 2, 4, 17, 3


def _analytic_forward() -> tuple[int, int]:
    """(all, attention) FLOPs of DEPTH pre-norm ViT blocks: qkv, proj, fc1, fc2 are 2*(3+1+4+4)*D^2 per token;
    QK^T and A·V are 2 * 2 * T^2 * D per sample (summed over heads)."""
    linear = BATCH * TOKENS * 2 * (3 + 1 + 4 + 4) * WIDTH**2
    attention = BATCH * 2 * 2 * TOKENS**2 * WIDTH
    return DEPTH * (linear + attention), DEPTH * attention


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_a_vit_forward_counts_exactly_the_analytic_flops_with_attention(device: str) -> None:
    cfg = EncoderConfig(source="vit", width=WIDTH, depth=DEPTH, heads=HEADS, trainable_blocks=DEPTH)
    with torch.device(device):
        encoder = build_encoder(cfg).encoder
        x = torch.randn(BATCH, TOKENS, WIDTH)

    _, counted = count_flops(lambda: encoder(x))

    total, attention = _analytic_forward()
    assert counted.attention == attention > 0
    assert counted.total == total


def test_attention_backward_is_counted_on_the_cpu_kernel() -> None:
    q, k, v = (torch.randn(2, HEADS, TOKENS, WIDTH // HEADS, requires_grad=True) for _ in range(3))

    _, counted = count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v).sum().backward())

    forward = 2 * 2 * 2 * HEADS * TOKENS**2 * (WIDTH // HEADS)
    # torch's formula for fused kernels: the backward recomputes the scores, then four products
    assert counted.attention == forward + 5 * forward // 2
