"""The attacks work where their premise holds: an exact inversion of a known tokenizer, the scalars' unique
label vector, k-means that finds separated directions, and an epsilon from the library that shrinks with noise."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mpsl.analysis.privacy.accountant import gaussian_epsilon, privacy_spent
from mpsl.analysis.privacy.attacks import (
    auc,
    direction_clusters,
    invert_patch_tokenizer,
    matched_accuracy,
    psnr,
    read_text_tokens,
    scalar_labels,
    ssim,
)
from mpsl.config import PrivacyConfig
from mpsl.models.tokenizers import PatchTokenizer, TextTokenizer


def test_a_known_patch_tokenizer_is_inverted_exactly_despite_its_layernorm() -> None:
    # Prepare: overlapping patches (an AST-like stride) of a random input
    torch.manual_seed(0)
    tok = PatchTokenizer(1, (12, 12), (4, 4), (2, 2), width=32, norm=nn.LayerNorm(32))
    x = torch.randn(3, 1, 12, 12)
    # Execute
    with torch.no_grad():
        guess = invert_patch_tokenizer(tok, tok(x), (1, 12, 12))
    # Assert
    assert psnr(guess, x) > 60 and ssim(guess, x) > 0.999


def test_another_tokenizer_inverts_to_noise() -> None:
    torch.manual_seed(0)
    tok, other = (PatchTokenizer(1, (12, 12), (4, 4), (4, 4), width=32, norm=nn.LayerNorm(32)) for _ in range(2))
    x = torch.randn(3, 1, 12, 12)
    with torch.no_grad():
        guess = invert_patch_tokenizer(other, tok(x), (1, 12, 12))
    # no better than guessing the mean (zero) everywhere
    assert psnr(guess, x) < psnr(torch.zeros_like(x), x) + 1 and ssim(guess, x) < 0.3


def _text_tokenizer(seed: int) -> TextTokenizer:
    """A 200-word vocabulary at width 32 (a pretrained table's scale, std 0.05), positions drawn from `seed`."""
    torch.manual_seed(seed)
    words = nn.Embedding(200, 32)
    nn.init.normal_(words.weight, std=0.05)
    return TextTokenizer(words, 8, nn.LayerNorm(32))


def test_text_tokens_are_read_back_from_known_word_embeddings_even_with_unknown_positions() -> None:
    # Prepare: the client's tokenizer, and a server's rebuild with the same words but other positions
    client = _text_tokenizer(seed=0)
    server = _text_tokenizer(seed=1)
    server.words.weight.data.copy_(client.words.weight.data)
    ids = torch.randint(200, (16, 8), generator=torch.Generator().manual_seed(2))  # [16, 8]
    with torch.no_grad():
        tokens = client(ids)  # [16, 8, 32]
    # Execute
    exact, rebuilt = read_text_tokens(client, tokens), read_text_tokens(server, tokens)
    # Assert: every word with the client's positions, nearly every one without them (chance is 1/200)
    assert torch.equal(exact, ids)
    assert (rebuilt == ids).float().mean() > 0.9


def test_text_tokens_of_other_word_embeddings_read_as_noise() -> None:
    client, other = _text_tokenizer(seed=0), _text_tokenizer(seed=3)  # different tables altogether
    ids = torch.randint(200, (16, 8), generator=torch.Generator().manual_seed(2))  # [16, 8]
    with torch.no_grad():
        read = read_text_tokens(other, client(ids))
    assert (read == ids).float().mean() < 0.05


def test_the_loss_and_hit_count_of_a_small_batch_name_its_labels() -> None:
    # Prepare: logits the server knows, labels it does not
    torch.manual_seed(1)
    logits, labels = torch.randn(4, 5) * 3, torch.tensor([3, 0, 4, 4])
    loss = float(nn.functional.cross_entropy(logits, labels))
    correct = int((logits.argmax(1) == labels).sum())
    # Execute / Assert
    assert torch.equal(scalar_labels(logits, loss, correct), labels)


def test_clustering_recovers_separated_directions_up_to_naming() -> None:
    torch.manual_seed(2)
    centres = torch.randn(4, 16) * 5
    labels = torch.randint(0, 4, (80,))
    grads = centres[labels] + torch.randn(80, 16) * 0.3
    clusters = direction_clusters(grads, 4)
    assert matched_accuracy(clusters, labels, 4) == 1.0
    assert matched_accuracy(torch.zeros(80, dtype=torch.long), labels, 4) < 0.5


def test_auc_orders_scores_and_counts_ties_half() -> None:
    scores = torch.tensor([3.0, 2.0, 2.0, 0.0])
    assert auc(scores, torch.tensor([True, False, False, False])) == 1.0
    assert auc(scores, torch.tensor([False, True, False, False])) == pytest.approx(0.5)


def test_epsilon_comes_from_the_rdp_accountant_and_shrinks_with_noise_and_grows_with_epochs() -> None:
    # Prepare / Execute
    one = gaussian_epsilon(2.0, 1, 1e-5)  # noise multiplier 1 on a sensitivity-2C release
    classic = math.sqrt(2 * math.log(1.25 / 1e-5))  # the textbook Gaussian-mechanism bound for multiplier 1
    spent = privacy_spent(PrivacyConfig(token_clip=1.0, token_noise=4.0, grad_clip=1.0), epochs=3)
    # Assert
    assert 0.8 * classic < one < classic
    assert gaussian_epsilon(4.0, 1, 1e-5) < one < gaussian_epsilon(2.0, 3, 1e-5)
    assert spent.epsilon_tokens == pytest.approx(gaussian_epsilon(4.0, 3, 1e-5)) and spent.epsilon_labels is None
