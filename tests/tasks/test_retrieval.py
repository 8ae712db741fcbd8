"""Retrieval: Recall@K on a hand-checkable similarity matrix, the paper's contrastive loss, the CLIP-style head."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mpsl.models import RetrievalHead
from mpsl.tasks import TASKS, RetrievalTask
from mpsl.tasks.retrieval import contrastive_loss, recall_at

# 3 images x 6 captions (caption j belongs to image j // 2); S[i, j] = image i . caption j
S = torch.tensor([
    [0.90, 0.10, 0.80, 0.20, 0.30, 0.10],  # own best 0.90, nothing higher: rank 0
    [0.95, 0.20, 0.50, 0.40, 0.10, 0.00],  # own best 0.50, one higher (0.95): rank 1
    [0.90, 0.80, 0.70, 0.60, 0.50, 0.10],  # own best 0.50, four higher: rank 4
])


def _embeddings(sim: torch.Tensor, slots: int) -> torch.Tensor:
    """Predictions [N, 1 + K, D] whose image . caption products are exactly `sim`: captions are unit vectors."""
    n, m = sim.shape
    captions = torch.eye(m).reshape(n, slots, m)  # caption j = e_j: [N, K, N*K]
    return torch.cat([sim.unsqueeze(1), captions], dim=1)  # [N, 1 + K, N*K]


def test_recall_on_a_toy_matrix_both_ways() -> None:
    # Execute
    got = recall_at(_embeddings(S, slots=2))
    # Assert. image->text ranks 0, 1, 4. text->image (columns of S): caption 0 ranks 1 (0.95 > 0.90),
    # 1 ranks 2, 2 ranks 2, 3 ranks 1, 4 ranks 0, 5 ranks 1 (a tie with image 0 counts against it)
    assert got["i2t_r1"] == pytest.approx(1 / 3)
    assert got["i2t_r5"] == got["i2t_r10"] == 1.0
    assert got["t2i_r1"] == pytest.approx(1 / 6)
    assert got["t2i_r5"] == got["t2i_r10"] == 1.0
    assert got["recall_mean"] == pytest.approx((1 / 3 + 1 + 1 + 1 / 6 + 1 + 1) / 6)


def test_recall_does_not_depend_on_the_chunk_size() -> None:
    predictions = torch.randn(50, 6, 16)
    assert recall_at(predictions, chunk=7) == recall_at(predictions, chunk=1024)


def test_contrastive_loss_is_the_mean_of_both_directions_summed_over_caption_slots() -> None:
    # Prepare: 2 samples, 2 caption slots
    torch.manual_seed(0)
    predictions = torch.randn(2, 3, 4)
    images, captions = predictions[:, 0], predictions[:, 1:]
    # Execute
    loss = contrastive_loss(predictions)
    # Assert: by hand, slot by slot, with -log softmax written out
    expected = 0.0
    for k in range(2):
        sim = images @ captions[:, k].T  # [2, 2]
        i2t = -(sim.diag() - sim.logsumexp(dim=1)).mean()
        t2i = -(sim.diag() - sim.logsumexp(dim=0)).mean()
        expected += (i2t + t2i) / 2
    assert loss.item() == pytest.approx(float(expected), rel=1e-6)


def test_a_perfect_batch_has_low_loss_and_every_image_correct() -> None:
    eye = 10 * torch.eye(4)
    predictions = torch.stack([eye, eye, eye], dim=1)  # image i and both its captions = 10 e_i: [4, 3, 4]
    task = RetrievalTask()
    assert task.correct(predictions, torch.arange(4)) == 4
    assert task.loss(predictions, torch.arange(4)).item() < 1e-3
    assert TASKS.get("retrieval") is RetrievalTask


def test_clip_style_head_normalizes_and_learns_its_temperature() -> None:
    # Prepare
    head = RetrievalHead(normalize=True, temperature=0.07, learn_temperature=True)
    features = torch.randn(4, 3, 8)
    # Execute
    out = head(features)
    contrastive_loss(out).backward()
    # Assert: unit captions, image rows scaled by 1 / 0.07, a gradient on the temperature
    torch.testing.assert_close(out[:, 1:].norm(dim=-1), torch.ones(4, 2))
    torch.testing.assert_close(out[:, 0].norm(dim=-1), torch.full((4,), 1 / 0.07))
    assert head.log_scale.grad is not None and head.log_scale.grad.abs() > 0
    torch.testing.assert_close(head.log_scale.detach(), torch.tensor(math.log(1 / 0.07)))


def test_paper_head_is_plain_dot_products_with_nothing_to_train() -> None:
    head = RetrievalHead(normalize=False, temperature=1.0, learn_temperature=False)
    features = torch.randn(2, 3, 5)
    torch.testing.assert_close(head(features), features)
    assert list(head.parameters()) == []
    assert F.cosine_similarity(head(features)[:, 0], features[:, 0]).min() > 0.999
