"""What the server lets into a step from one client, so that one client cannot damage the shared encoder.

Decoding already refuses non-finite values. A finite value can still be large enough to overflow the
encoder (a token of 1e30 squares to infinity in the first LayerNorm), or a gradient large enough to
fill Adam's second moment for thousands of steps. The step checks each client's contribution against
these bounds, and the encoder's outputs and gradients for finiteness, and leaves a client that fails
out of the step before any parameter or optimizer state changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mpsl.protocol.messages import FeatureGrad, Tokens
from mpsl.protocol.serde import all_finite

HEADROOM = 1e3  # how far below overflow a derived token bound sits
# an honest feature gradient is the gradient of a share (<= 1) of a mean loss: |values| this large only come
# from a broken or hostile client
DEFAULT_MAX_GRAD_ABS = 1e4


def derived_token_bound(width: int) -> float:
    """The largest |token value| whose square summed over a token (what LayerNorm computes first) stays
    HEADROOM² below float32's overflow: about 6.7e14 for width 768. Tokens of a working tokenizer are O(1-10)."""
    return math.sqrt(torch.finfo(torch.float32).max / width) / HEADROOM


def finite_tensors(tensors: list[torch.Tensor]) -> bool:
    """Every value of every tensor finite, with one device synchronization (a max-norm propagates NaN)."""
    tensors = [t for t in tensors if t.numel()]
    if not tensors:
        return True
    peaks = torch.stack([torch.linalg.vector_norm(t.detach(), float("inf")).float() for t in tensors])  # [n]
    return bool(torch.isfinite(peaks).all())


@dataclass(frozen=True)
class Guard:
    max_token_abs: float  # |values| of incoming cut-layer tokens
    max_grad_abs: float  # |values| of incoming feature gradients
    # robust aggregation, off when None: each client's gradient of its own mean loss (its feature gradient over
    # its share b_k / B) is clipped to this multiple of the step's median norm. Exact until it triggers
    clip_to_median: float | None = None

    def check_tokens(self, msg: Tokens) -> str | None:
        """Why these tokens may not enter the encoder, or None."""
        for m, t in msg.tokens.items():
            if not all_finite(t):
                return f"tokens.{m} contain NaN or infinite values"
            if t.numel() and (peak := float(t.abs().max())) > self.max_token_abs:
                return f"tokens.{m}: |value| {peak:.3g} above guard.max_token_abs={self.max_token_abs:.3g}"
        return None

    def check_grad(self, msg: FeatureGrad) -> str | None:
        """Why this feature gradient may not enter the backward pass, or None."""
        if not all_finite(msg.grad):
            return "feature gradient contains NaN or infinite values"
        if msg.grad.numel() and (peak := float(msg.grad.abs().max())) > self.max_grad_abs:
            return f"feature gradient: |value| {peak:.3g} above guard.max_grad_abs={self.max_grad_abs:.3g}"
        return None

    def clip(self, grads: dict[int, torch.Tensor], weights: dict[int, float]) -> dict[int, float]:
        """Clip in place, per client, to `clip_to_median` x the median per-share norm; the factors applied."""
        if self.clip_to_median is None or len(grads) < 2:
            return {}
        norms = {k: float(g.norm()) / weights[k] for k, g in grads.items()}  # norm of the gradient of L_k
        limit = self.clip_to_median * float(torch.tensor(list(norms.values())).median())  # lower median
        factors = {k: limit / n for k, n in norms.items() if n > limit}
        for k, f in factors.items():
            grads[k].mul_(f)
        return factors
