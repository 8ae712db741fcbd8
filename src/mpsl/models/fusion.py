"""How the server combines modalities: one joint sequence (early) or one pass per modality (late).

Both return one CLS feature per modality, [B, M, D]; averaging them happens in the head, so the
same fusion output serves a head on the server or on the client.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mpsl.models.encoder import SharedEncoder
from mpsl.registry import Registry

Fusion = Callable[[SharedEncoder, list[torch.Tensor]], torch.Tensor]
FUSIONS: Registry[Fusion] = Registry("fusion")


@FUSIONS.register("early")
def early_fusion(encoder: SharedEncoder, tokens: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate modality tokens into one sequence so modalities attend to each other."""
    lengths = [t.shape[1] for t in tokens]
    joint = encoder(torch.cat(tokens, dim=1))  # [B, sum T_m, D]
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    return torch.stack([joint[:, s] for s in starts], dim=1)  # CLS of each modality: [B, M, D]


@FUSIONS.register("late")
def late_fusion(encoder: SharedEncoder, tokens: list[torch.Tensor]) -> torch.Tensor:
    """Each modality through the shared encoder on its own; only the CLS features meet."""
    return torch.stack([encoder(t)[:, 0] for t in tokens], dim=1)  # [B, M, D]
