"""How the server combines modalities: one joint sequence (early) or one pass per modality (late).

Both return one feature per modality, [B, M, D]: its CLS output (paper) or the mean of its token
outputs (how sentence-transformers encoders such as all-MiniLM-L6-v2 were trained to be read).
Averaging over modalities happens in the head, so the same output serves a head on either side.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mpsl.models.encoder import SharedEncoder
from mpsl.registry import Registry

Pooling = Callable[[torch.Tensor], torch.Tensor]  # one modality's outputs [B, T_m, D] -> [B, D]
POOLINGS: Registry[Pooling] = Registry("pooling")
POOLINGS.register("cls")(lambda out: out[:, 0])
POOLINGS.register("mean")(lambda out: out.mean(dim=1))

Fusion = Callable[[SharedEncoder, list[torch.Tensor], Pooling], torch.Tensor]
FUSIONS: Registry[Fusion] = Registry("fusion")


@FUSIONS.register("early")
def early_fusion(encoder: SharedEncoder, tokens: list[torch.Tensor], pool: Pooling) -> torch.Tensor:
    """Concatenate modality tokens into one sequence so modalities attend to each other."""
    joint = encoder(torch.cat(tokens, dim=1))  # [B, sum T_m, D]
    parts = joint.split([t.shape[1] for t in tokens], dim=1)  # m -> [B, T_m, D]
    return torch.stack([pool(p) for p in parts], dim=1)  # [B, M, D]


@FUSIONS.register("late")
def late_fusion(encoder: SharedEncoder, tokens: list[torch.Tensor], pool: Pooling) -> torch.Tensor:
    """Each modality through the shared encoder on its own; only the pooled features meet."""
    return torch.stack([pool(encoder(t)) for t in tokens], dim=1)  # [B, M, D]
