"""How the server combines modalities: one joint sequence (early) or one pass per modality (late).

A fusion says two things: which tokens share a sequence when a stack of blocks runs over them (`run`), and
which outputs become feature rows (`rows`). The first is also what a client's own blocks follow under
`model.client_blocks`, so the encoder split anywhere computes what the whole encoder computes.

Early and late fusion return one feature per modality present, [B, M, D]: its CLS output (paper) or
the mean of its token outputs (how sentence-transformers encoders such as all-MiniLM-L6-v2 were
trained to be read). Averaging over modalities happens in the head, so the same output serves a
head on either side, and a client that lacks a modality simply has fewer rows. Dual fusion (retrieval)
returns one embedding per image and per sentence.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from mpsl.registry import Registry

Pooling = Callable[[torch.Tensor], torch.Tensor]  # one modality's outputs [B, T_m, D] -> [B, D]
POOLINGS: Registry[Pooling] = Registry("pooling", config_keys=("model.pooling",))
POOLINGS.register("cls")(lambda out: out[:, 0])
POOLINGS.register("mean")(lambda out: out.mean(dim=1))

Stack = Callable[[torch.Tensor], torch.Tensor]  # transformer blocks over sequences [B, T, D] -> [B, T, D]
Tokens = dict[str, torch.Tensor]  # modality -> [B, T_m, D], in fusion order
FusedRows = tuple[torch.Tensor, list[str]]  # [B, R, D] feature rows, and the modality each row comes from


@dataclass(frozen=True)
class Fusion:
    """`run(stack, tokens, sentences)`: the stack over the fusion's sequences, outputs in the tokens' shapes;
    `sentence_rows`: a sentence modality (one token per sentence) gives one feature row per sentence."""

    run: Callable[[Stack, Tokens, set[str]], Tokens]
    sentence_rows: bool = False

    def __call__(self, stack: Stack, tokens: Tokens, pool: Pooling, sentences: set[str]) -> FusedRows:
        outputs = self.run(stack, tokens, sentences)
        rows: list[torch.Tensor] = []
        names: list[str] = []
        for m, out in outputs.items():
            if self.sentence_rows and m in sentences:  # every sentence was its own 1-token sequence
                rows.extend(out.unbind(dim=1))  # S x [B, D]
                names.extend([m] * out.shape[1])
            else:
                rows.append(pool(out))  # [B, D]
                names.append(m)
        return torch.stack(rows, dim=1), names  # [B, R, D]


FUSIONS: Registry[Fusion] = Registry("fusion", config_keys=("model.fusion",))


def _joint(stack: Stack, tokens: Tokens, sentences: set[str]) -> Tokens:
    """Concatenate modality tokens into one sequence so modalities attend to each other."""
    parts = list(tokens.values())
    joint = stack(torch.cat(parts, dim=1))  # [B, sum T_m, D]
    return dict(zip(tokens, joint.split([t.shape[1] for t in parts], dim=1), strict=True))  # m -> [B, T_m, D]


def _apart(stack: Stack, tokens: Tokens, sentences: set[str]) -> Tokens:
    """Each modality through the stack on its own; only the pooled features meet."""
    return {m: stack(t) for m, t in tokens.items()}


def _each_sentence(stack: Stack, tokens: Tokens, sentences: set[str]) -> Tokens:
    """Retrieval: every modality on its own, and every sentence of a sentence modality (e.g. five captions) its
    own 1-token sequence, so each can be scored against the image."""
    out = {}
    for m, t in tokens.items():
        if m in sentences:
            b, s, d = t.shape
            out[m] = stack(t.reshape(b * s, 1, d)).reshape(b, s, d)  # [b, S, D] -> [b*S, 1, D] -> [b, S, D]
        else:
            out[m] = stack(t)
    return out


FUSIONS.register("early")(Fusion(_joint))
FUSIONS.register("late")(Fusion(_apart))
FUSIONS.register("dual")(Fusion(_each_sentence, sentence_rows=True))
