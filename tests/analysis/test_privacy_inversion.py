"""The learned inversion reads inputs back from tokens that carry them, mixed across positions or not, and
falls back to the mean input when the tokens carry nothing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mpsl.analysis.privacy.attacks import psnr, ssim
from mpsl.analysis.privacy.inversion import InversionSettings, learned_inversion, train_inversion
from mpsl.models.tokenizers import PatchTokenizer

SHAPE = (1, 12, 12)
SETTINGS = InversionSettings(steps=200, hidden=128, components=64)


def _images(n: int, seed: int) -> torch.Tensor:
    """[n, 1, 12, 12] inputs with structure a few hundred samples can teach: random mixes of 6 fixed patterns."""
    patterns = torch.randn(6, 144, generator=torch.Generator().manual_seed(0))  # [6, 144], shared by every draw
    coefficients = torch.randn(n, 6, generator=torch.Generator().manual_seed(seed))  # [n, 6]
    return (coefficients @ patterns).view(n, *SHAPE)  # [n, 144] -> [n, 1, 12, 12]


def _tokenizer() -> PatchTokenizer:
    torch.manual_seed(3)
    return PatchTokenizer(1, SHAPE[1:], (4, 4), (4, 4), width=32, norm=nn.LayerNorm(32)).eval()


@pytest.mark.parametrize("mixed", [False, True])
def test_a_known_tokenizer_is_inverted_far_better_than_the_mean_input(mixed: bool) -> None:
    # Prepare: the attacker queries the client's tokenizer on public data; with `mixed` every token is a random
    # blend of all positions (as after transformer blocks on the client)
    tok = _tokenizer()
    blend = torch.randn(10, 10, generator=torch.Generator().manual_seed(4))  # [T, T]

    def encode(x: torch.Tensor) -> torch.Tensor:
        tokens = tok(x)  # [n, 10, 32]
        return torch.einsum("st,ntd->nsd", blend, tokens) if mixed else tokens

    public, private = _images(300, seed=1), _images(64, seed=2)
    with torch.no_grad():
        queried, sent = encode(public), encode(private)
    # Execute
    guess = learned_inversion(queried, public, sent, SETTINGS)
    # Assert: the mean of the public inputs is the guess without the tokens
    mean = public.mean(0).expand_as(private)
    assert psnr(guess, private) > psnr(mean, private) + 6
    assert ssim(guess, private) > ssim(mean, private) + 0.3


def test_tokens_independent_of_the_input_teach_nothing() -> None:
    # Prepare: the client's "tokens" are noise drawn without looking at the input
    noise = torch.Generator().manual_seed(5)

    def encode(x: torch.Tensor) -> torch.Tensor:
        return torch.randn(len(x), 10, 32, generator=noise)

    public, private = _images(300, seed=1), _images(64, seed=2)
    # Execute
    guess = learned_inversion(encode(public), public, encode(private), SETTINGS)
    # Assert: no better than the mean input (the held-out public pairs keep the decoder from fitting the noise)
    mean = public.mean(0).expand_as(private)
    assert psnr(guess, private) < psnr(mean, private) + 0.5
    assert ssim(guess, private) < ssim(mean, private) + 0.05


def test_training_is_seeded_and_leaves_the_global_random_stream_alone() -> None:
    # Prepare
    tok, public = _tokenizer(), _images(100, seed=1)
    with torch.no_grad():
        tokens = tok(public)  # [100, 10, 32]
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    # Execute
    first = train_inversion(tokens, public, InversionSettings(steps=20, hidden=32, components=16))
    after = torch.random.get_rng_state()
    second = train_inversion(tokens, public, InversionSettings(steps=20, hidden=32, components=16))
    # Assert
    assert torch.equal(before, after)
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
