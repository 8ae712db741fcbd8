"""What a client does to its messages so that the server learns less (docs/privacy.md measures each).

Both noise mechanisms are the Gaussian mechanism on one sample at a time: the sample's tensors (all of
them together) are scaled down to L2 norm at most `clip`, then each element gets N(0, (noise x clip)^2).

    tokens       z_i -> clip(z_i) + N(0, (sigma_z C_z)^2)         the inputs' cut-layer tokens (input privacy)
    gradients    g_i -> clip(g_i) + N(0, (sigma_g C_g)^2)          g_i = d l_i / d features_i, the gradient of
                                                                  sample i's own loss (label privacy)

The noise is drawn from the client's own generator on the host (seeded from the clients' secret seed, never
from anything the server has), so a seeded run gets the same noise however its clients are executed (one
after another, batched, or over gRPC).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ClientPrivacy:
    """A client's privacy settings (from the config's `privacy` section)."""

    step_metrics: bool = True  # send the step's loss and correct count with every feature gradient
    grad_clip: float | None = None  # per-sample L2 bound of the returned gradient; None: sent as computed
    grad_noise: float = 0.0  # noise std as a multiple of grad_clip
    token_clip: float | None = None  # per-sample L2 bound of the tokens (all modalities together); None: off
    token_noise: float = 0.0  # noise std as a multiple of token_clip
    nopeek: float = 0.0  # weight of distance correlation(inputs, tokens) in the client's loss
    noise_seed: int = 0  # seeds the client's noise: a server that knows it can subtract the noise, so keep it secret

    def __post_init__(self) -> None:
        for clip, noise in ((self.grad_clip, self.grad_noise), (self.token_clip, self.token_noise)):
            if (clip is not None and clip <= 0) or noise < 0 or (noise > 0 and clip is None):
                raise ValueError(f"clip must be positive and noise >= 0 with a clip, got clip={clip}, noise={noise}")


def clip_per_sample(parts: list[torch.Tensor], bound: float) -> list[torch.Tensor]:
    """Each sample's tensors, together, scaled to L2 norm at most `bound`: parts [b, ...] -> same shapes.

    Differentiable: a client backpropagates through its own clipping."""
    squares = sum(p.flatten(1).pow(2).sum(1) for p in parts)  # [b]
    norms = squares.sqrt()  # [b]
    scale = (bound / norms.clamp_min(1e-12)).clamp(max=1.0)  # [b], 1 for samples already inside the bound
    return [p * scale.view(-1, *([1] * (p.dim() - 1))) for p in parts]  # [b, ...] * [b, 1, ...]


def gaussian(shape: torch.Size, std: float, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """N(0, std^2) noise of `shape`, drawn on the host from `generator`, then placed like `like`."""
    noise = torch.randn(shape, generator=generator, dtype=torch.float32) * std
    return noise.to(device=like.device, dtype=like.dtype)


def privatize(parts: list[torch.Tensor], clip: float | None, noise: float,
              generator: torch.Generator) -> list[torch.Tensor]:
    """The Gaussian mechanism on each sample of `parts` ([b, ...] each, one sample = row i of every part);
    the parts unchanged when `clip` is None."""
    if clip is None:
        return parts
    clipped = clip_per_sample(parts, clip)
    if noise == 0:
        return clipped
    return [p + gaussian(p.shape, noise * clip, generator, p) for p in clipped]


def protect_tokens(tokens: dict[str, torch.Tensor], privacy: ClientPrivacy,
                   generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The tokens a client sends: m -> [b, T_m, D], clipped and noised per sample when configured."""
    names = list(tokens)
    sent = privatize([tokens[m] for m in names], privacy.token_clip, privacy.token_noise, generator)
    return dict(zip(names, sent, strict=True))


def protect_grad(grad: torch.Tensor, loss_weight: float, privacy: ClientPrivacy,
                 generator: torch.Generator) -> torch.Tensor:
    """The feature gradient a client returns, [b, ...]: row i is (w / b) d l_i / d f_i for a mean loss with
    weight w, so the mechanism runs on the per-sample gradient b/w x row and scales back."""
    if privacy.grad_clip is None or loss_weight == 0:
        return grad
    per_sample = grad.shape[0] / loss_weight
    (noisy,) = privatize([grad * per_sample], privacy.grad_clip, privacy.grad_noise, generator)
    return noisy / per_sample


def distance_correlation(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Sample distance correlation between two batches x [b, ...] and z [b, ...] (NoPeek, Vepakomma et al.):
    0 when independent, 1 when one is a similarity transform of the other."""

    def centred(a: torch.Tensor) -> torch.Tensor:
        flat = a.flatten(1).float()  # [b, F]
        d = (flat[:, None, :] - flat[None, :, :]).pow(2).sum(-1).clamp_min(1e-12).sqrt()  # [b, b]
        return d - d.mean(0, keepdim=True) - d.mean(1, keepdim=True) + d.mean()

    a, b = centred(x), centred(z)
    dcov_xz = (a * b).mean()
    dcov_xx, dcov_zz = (a * a).mean(), (b * b).mean()
    return dcov_xz.clamp_min(0).sqrt() / (dcov_xx.sqrt() * dcov_zz.sqrt()).clamp_min(1e-12).sqrt()
