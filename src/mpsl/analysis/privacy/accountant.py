"""The (epsilon, delta) the privacy settings give, computed by Google's dp-accounting (RDP accountant).

Each sample's message (its tokens; its returned gradient) is released once per epoch through the Gaussian
mechanism of mpsl.protocol.privacy: clipped to L2 norm C, noise of std sigma C per element. Replacing one
sample by another moves a clipped message by at most 2C, so each release is a Gaussian mechanism of noise
multiplier sigma / 2 for that sample, and a run is `epochs` of them composed.

    tokens      epsilon for the inputs: every later message is computed from the noisy tokens (or from labels)
    gradients   epsilon for the labels, for the returned gradients only: the per-epoch metrics each client
                reports (summed loss and hits) carry no noise
"""

from __future__ import annotations

from dataclasses import dataclass

from mpsl.config import PrivacyConfig
from mpsl.errors import MpslError


@dataclass(frozen=True)
class PrivacySpent:
    """(epsilon, delta) per protected message; None where the mechanism is off or adds no noise."""

    delta: float
    epsilon_tokens: float | None
    epsilon_labels: float | None
    releases: int  # times each sample's message was released (epochs)


def gaussian_epsilon(noise: float, releases: int, delta: float) -> float:
    """Epsilon of `releases` compositions of a Gaussian mechanism with sensitivity 2C and std noise x C."""
    try:
        import dp_accounting
    except ImportError:
        raise MpslError("privacy noise needs dp-accounting to report its epsilon: pip install 'mpsl[privacy]'") \
            from None
    event = dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(noise / 2), releases)
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(event)
    return float(accountant.get_epsilon(delta))


def privacy_spent(p: PrivacyConfig, epochs: int) -> PrivacySpent:
    """What a run of `epochs` epochs with these settings spends."""
    tokens = gaussian_epsilon(p.token_noise, epochs, p.delta) if p.token_clip is not None and p.token_noise else None
    labels = gaussian_epsilon(p.grad_noise, epochs, p.delta) if p.grad_clip is not None and p.grad_noise else None
    return PrivacySpent(p.delta, tokens, labels, epochs)
