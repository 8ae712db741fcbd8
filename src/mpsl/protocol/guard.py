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
            if (reason := _out_of_bounds(t, f"tokens.{m}", "guard.max_token_abs", self.max_token_abs)) is not None:
                return reason
        return None

    def check_grad(self, msg: FeatureGrad) -> str | None:
        """Why this feature gradient may not enter the backward pass, or None."""
        return _out_of_bounds(msg.grad, "feature gradient", "guard.max_grad_abs", self.max_grad_abs)

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


def _out_of_bounds(t: torch.Tensor, name: str, key: str, bound: float) -> str | None:
    """One pass over `t`: its largest |value| (NaN if it holds one) against the bound `key` sets."""
    if not t.numel():
        return None
    peak = float(torch.linalg.vector_norm(t.detach(), float("inf")))
    if not math.isfinite(peak):
        return f"{name}: contains NaN or infinite values"
    return f"{name}: |value| {peak:.3g} above {key}={bound:.3g}" if peak > bound else None
