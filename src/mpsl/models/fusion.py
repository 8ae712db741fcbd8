"""How the server combines modalities: one joint sequence (early) or one pass per modality (late).

Early and late fusion return one feature per modality present, [B, M, D]: its CLS output (paper) or
the mean of its token outputs (how sentence-transformers encoders such as all-MiniLM-L6-v2 were
trained to be read). Averaging over modalities happens in the head, so the same output serves a
head on either side, and a client that lacks a modality simply has fewer rows. Dual fusion (retrieval)
returns one embedding per image and per sentence.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mpsl.models.encoder import SharedEncoder
from mpsl.registry import Registry

Pooling = Callable[[torch.Tensor], torch.Tensor]  # one modality's outputs [B, T_m, D] -> [B, D]
POOLINGS: Registry[Pooling] = Registry("pooling", config_keys=("model.pooling",))
POOLINGS.register("cls")(lambda out: out[:, 0])
POOLINGS.register("mean")(lambda out: out.mean(dim=1))

FusedRows = tuple[torch.Tensor, list[str]]  # [B, R, D] feature rows, and the modality each row comes from
# (encoder, modality -> tokens [B, T_m, D] in fusion order, pooling, modalities whose tokens are sentences)
Fusion = Callable[[SharedEncoder, dict[str, torch.Tensor], Pooling, set[str]], FusedRows]
FUSIONS: Registry[Fusion] = Registry("fusion", config_keys=("model.fusion",))


@FUSIONS.register("early")
def early_fusion(encoder: SharedEncoder, tokens: dict[str, torch.Tensor], pool: Pooling,
                 sentences: set[str]) -> FusedRows:
    """Concatenate modality tokens into one sequence so modalities attend to each other."""
    parts = list(tokens.values())
    joint = encoder(torch.cat(parts, dim=1))  # [B, sum T_m, D]
    outputs = joint.split([t.shape[1] for t in parts], dim=1)  # m -> [B, T_m, D]
    return torch.stack([pool(p) for p in outputs], dim=1), list(tokens)  # [B, M, D]


@FUSIONS.register("late")
def late_fusion(encoder: SharedEncoder, tokens: dict[str, torch.Tensor], pool: Pooling,
                sentences: set[str]) -> FusedRows:
    """Each modality through the shared encoder on its own; only the pooled features meet."""
    return torch.stack([pool(encoder(t)) for t in tokens.values()], dim=1), list(tokens)  # [B, M, D]


@FUSIONS.register("dual")
def dual_fusion(encoder: SharedEncoder, tokens: dict[str, torch.Tensor], pool: Pooling,
                sentences: set[str]) -> FusedRows:
    """Retrieval: every modality embedded on its own, and a sentence modality (one token per sentence,
    e.g. five captions) gives one embedding per sentence, so each can be scored against the image."""
    rows: list[torch.Tensor] = []
    names: list[str] = []
    for m, t in tokens.items():
        if m in sentences:
            b, s, d = t.shape
            each = encoder(t.reshape(b * s, 1, d))  # every sentence its own sequence: [b*S, 1, D]
            rows.extend(pool(each).reshape(b, s, d).unbind(dim=1))  # S x [b, D]
            names.extend([m] * s)
        else:
            rows.append(pool(encoder(t)))  # [b, D]
            names.append(m)
    return torch.stack(rows, dim=1), names  # [B, R, D]
