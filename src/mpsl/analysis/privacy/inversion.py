"""A learned inversion network: the server trains a decoder from tokens back to inputs on public data.

The attacker has public inputs of the same kind as the clients' (a disjoint part of the dataset) and query
access to a client model (a colluding client, or a server that may run a client's current model): the tokens
that model sends for each public input. It trains a decoder on these (tokens, input) pairs and applies it to
the private tokens it received.

The decoder is one MLP over all of a sample's tokens flattened, [T * D] -> k -> hidden -> [*input shape], not one
per token: with transformer blocks on the client (`model.client_blocks`) every token mixes every position,
so no token can be decoded into its own patch alone. Its output is the public mean input plus a correction
whose last layer starts at zero, and training keeps the weights that did best on held-out public samples:
when the tokens carry nothing about the input the attack falls back to the mean input instead of to noise
fitted to the training pairs, so it scores what the tokens leak and not what it memorized.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class InversionSettings:
    """How much the attacker spends: CPU seconds for a few hundred samples at avdigits shapes."""

    steps: int = 300  # Adam steps
    hidden: int = 512  # width of the decoder's one hidden layer
    components: int = 256  # principal components of the flattened tokens the decoder reads
    batch: int = 64  # public pairs per step
    lr: float = 1e-3
    weight_decay: float = 1e-4
    holdout: float = 0.2  # share of the public samples kept out of training to pick the weights
    check_every: int = 25  # steps between held-out checks
    seed: int = 0


class TokenDecoder(nn.Module):
    """Tokens [b, T, D] -> inputs [b, *shape]: mean input + MLP(the tokens' top principal components).

    The flattened tokens are projected on their `components` leading principal directions over the training
    pairs first. A first layer trained by gradient descent only moves inside the span of its training inputs,
    so the projection drops nothing it could learn (with fewer pairs than components it is lossless on them)
    and makes the attack several times cheaper at T * D in the thousands.
    """

    def __init__(self, tokens: torch.Tensor, inputs: torch.Tensor, hidden: int, components: int) -> None:
        super().__init__()
        flat = tokens.flatten(1)  # [n, T, D] -> [n, T * D]
        mean = flat.mean(0)  # [T * D]
        _, s, vh = torch.linalg.svd(flat - mean, full_matrices=False)  # vh: [min(n, T * D), T * D]
        k = min(components, len(s))
        self.register_buffer("token_mean", mean)
        self.register_buffer("basis", vh[:k].T.contiguous())  # [T * D, k]
        # one scale for every component (the root mean square projection): whitening would blow up the
        # directions of least variance, noise the private tokens may carry more of
        self.register_buffer("scale", (s[:k].pow(2).sum() / (len(flat) * k)).sqrt().clamp_min(1e-6))
        self.register_buffer("input_mean", inputs.mean(0))  # [*shape]
        self.shape = tuple(inputs.shape[1:])
        self.net = nn.Sequential(nn.Linear(k, hidden), nn.GELU(), nn.Linear(hidden, math.prod(self.shape)))
        nn.init.zeros_(self.net[-1].weight)  # starts as the mean-input guess
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        z = (tokens.flatten(1) - self.token_mean) @ self.basis / self.scale  # [b, T * D] @ [T * D, k] -> [b, k]
        return self.input_mean + self.net(z).view(-1, *self.shape)  # [b, P] -> [b, *shape]


def train_inversion(tokens: torch.Tensor, public: torch.Tensor, settings: InversionSettings = InversionSettings()
                    ) -> TokenDecoder:
    """A decoder trained on public pairs, the tokens [n, T, D] a client model sends for inputs [n, *shape]
    (n >= 2), seeded and deterministic; the global random stream is left as it was (the attack runs between
    training epochs)."""
    if len(public) < 2 or len(tokens) != len(public):
        raise ValueError(f"a learned inversion needs 2 public pairs or more (to train and to hold out), got "
                         f"{len(tokens)} token rows for {len(public)} inputs")
    public, tokens = public.float(), tokens.detach().float()
    n = len(public)
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(settings.seed)  # the CPU stream only: fork_rng restores only it
        order = torch.randperm(n)
        held = min(n - 1, max(1, int(n * settings.holdout)))  # at least one sample on each side
        val, train = order[:held], order[held:]
        decoder = TokenDecoder(tokens[train], public[train], settings.hidden, settings.components)
        optimizer = torch.optim.Adam(decoder.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
        best, best_loss = copy.deepcopy(decoder.state_dict()), _loss(decoder, tokens[val], public[val])
        for step in range(1, settings.steps + 1):
            pick = train[torch.randint(len(train), (min(settings.batch, len(train)),))]  # [batch]
            loss = F.mse_loss(decoder(tokens[pick]), public[pick])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step % settings.check_every == 0 or step == settings.steps:
                held_loss = _loss(decoder, tokens[val], public[val])
                if held_loss < best_loss:
                    best, best_loss = copy.deepcopy(decoder.state_dict()), held_loss
        decoder.load_state_dict(best)
    return decoder.eval()


def _loss(decoder: TokenDecoder, tokens: torch.Tensor, inputs: torch.Tensor) -> float:
    with torch.no_grad():
        return float(F.mse_loss(decoder(tokens), inputs))


def learned_inversion(public_tokens: torch.Tensor, public: torch.Tensor, tokens: torch.Tensor,
                      settings: InversionSettings = InversionSettings()) -> torch.Tensor:
    """Private tokens [b, T, D] -> guessed inputs [b, *shape], by a decoder trained on the public pairs."""
    decoder = train_inversion(public_tokens, public, settings)
    with torch.no_grad():
        return decoder(tokens.float())
