"""Attacks a curious server can run on what it receives: label inference and input reconstruction.

Each takes only server-side knowledge (the messages, and what the server can build from its own config) and
returns a guess; the harness (mpsl.experiment.privacy) scores the guess against the truth.

    logit-gradient sign     head on the server: dL/dlogits = (softmax - onehot) / B, its one negative entry
                            is the label
    known-initial-head      head on the client: the server rebuilds the clients' initial head W0 from the
                            seed; dL/df = (p - y) W0 / M per modality, so argmin of dL/df . W0^T is the label
    direction clustering    k-means on the unit feature gradients: same-label gradients point alike (Li et
                            al., "Label Leakage and Protection in Two-party Split Learning"); scored with
                            the best cluster-to-label matching, i.e. what one known label per class names
    gradient norm           Li et al.'s norm score: the AUC of ||g|| separating each class from the rest
    loss/correct scalars    with the known initial head: the label vector whose mean loss and hit count
                            match the two numbers sent with the step
    known-tokenizer inverse the patch embedding is linear and the pre-LayerNorm only rescales and shifts each
                            token: W p - s u - m 1 = -pos is solved for the patch p by least squares
    known-embedding reading a text token is LayerNorm(E[id] + pos): with the word embeddings E of the public
                            checkpoint, the id whose normalized E[id] + pos is nearest in direction is read back
"""

from __future__ import annotations

import itertools

import torch
from torch import nn
from torch.nn import functional as F

from mpsl.models.tokenizers import PatchTokenizer, TextTokenizer


def logit_gradient_labels(grad: torch.Tensor) -> torch.Tensor:
    """[b, C] gradients of a cross-entropy w.r.t. the logits -> [b] labels (the one negative entry)."""
    return grad.argmin(dim=1)


def projected_labels(grad: torch.Tensor, head_weight: torch.Tensor) -> torch.Tensor:
    """Feature gradients [b, M, D] and a guess of the head's weight [C, D] -> [b] labels: argmin over
    classes of the gradient projected on each class's weight row."""
    pooled = grad.mean(dim=1) if grad.dim() == 3 else grad  # [b, M, D] -> [b, D]
    return (pooled @ head_weight.T).argmin(dim=1)  # [b, D] @ [D, C] -> [b, C] -> [b]


def kmeans(points: torch.Tensor, k: int, seed: int = 0, iterations: int = 50) -> torch.Tensor:
    """Plain k-means (k-means++ start) of points [n, F] -> [n] cluster ids."""
    gen = torch.Generator().manual_seed(seed)
    centres = [points[torch.randint(len(points), (1,), generator=gen)].squeeze(0)]
    for _ in range(1, k):
        d = torch.cdist(points, torch.stack(centres)).min(dim=1).values.pow(2)  # [n]
        if float(d.sum()) == 0:
            centres.append(points[torch.randint(len(points), (1,), generator=gen)].squeeze(0))
            continue
        centres.append(points[torch.multinomial(d / d.sum(), 1, generator=gen)].squeeze(0))
    c = torch.stack(centres)  # [k, F]
    assign = torch.zeros(len(points), dtype=torch.long)
    for _ in range(iterations):
        assign = torch.cdist(points, c).argmin(dim=1)  # [n]
        moved = torch.stack([points[assign == j].mean(0) if (assign == j).any() else c[j] for j in range(k)])
        if torch.allclose(moved, c):
            break
        c = moved
    return assign


def matched_accuracy(clusters: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Accuracy of clusters as labels under the best one-to-one cluster-to-label naming (Hungarian)."""
    from scipy.optimize import linear_sum_assignment

    k = int(clusters.max()) + 1
    counts = torch.zeros(k, num_classes)  # [k, C] co-occurrences
    counts.index_put_((clusters, labels), torch.ones(len(labels)), accumulate=True)
    rows, cols = linear_sum_assignment(-counts.numpy())
    return float(counts[rows, cols].sum()) / max(len(labels), 1)


def direction_clusters(grads: torch.Tensor, num_classes: int, seed: int = 0) -> torch.Tensor:
    """Feature gradients [n, ...] -> [n] cluster ids of their directions (cosine k-means)."""
    flat = F.normalize(grads.flatten(1).double(), dim=1).float()  # [n, F] unit rows
    return kmeans(flat, num_classes, seed)


def auc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Area under the ROC curve of `scores` [n] for the boolean `positive` [n] (ties count one half)."""
    pos, neg = scores[positive], scores[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return 0.5
    greater = (pos[:, None] > neg[None, :]).double().mean()
    ties = (pos[:, None] == neg[None, :]).double().mean()
    return float(greater + ties / 2)


def norm_score_auc(grads: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Li et al.'s norm attack, one class against the rest: the mean over classes of the AUC of the gradient
    norm, taken in the direction it separates (max(AUC, 1 - AUC)); 0.5 when the norm tells nothing."""
    norms = grads.flatten(1).norm(dim=1)  # [n]
    present = [c for c in range(num_classes) if (labels == c).any() and (labels != c).any()]
    return sum(max(a := auc(norms, labels == c), 1 - a) for c in present) / max(len(present), 1)


def scalar_labels(logits: torch.Tensor, loss: float, correct: int) -> torch.Tensor:
    """The label vector [b] whose mean cross-entropy under `logits` [b, C] is closest to `loss` among those
    with `correct` hits (every one of the C^b vectors is tried: small b only)."""
    b, c = logits.shape
    logp = logits.log_softmax(dim=1)  # [b, C]
    predicted = logits.argmax(dim=1)  # [b]
    candidates = torch.tensor(list(itertools.product(range(c), repeat=b)))  # [C^b, b]
    losses = -logp[torch.arange(b), candidates].mean(dim=1)  # [C^b]
    hits = (candidates == predicted).sum(dim=1)  # [C^b]
    losses[hits != correct] = float("inf")
    return candidates[(losses - loss).abs().argmin()]


def invert_patch_tokenizer(tok: PatchTokenizer, tokens: torch.Tensor, input_shape: tuple[int, ...]) -> torch.Tensor:
    """Tokens [b, 1 + N, D] of a PatchTokenizer with known weights -> inputs [b, *input_shape].

    Per patch token j: u_j = (z_j - beta) / gamma is the pre-LayerNorm vector a_j = W p_j + pos_j up to its
    scale s and mean m, so [W, -u_j, -1] [p_j; s; m] = -pos_j is solved by least squares; overlapping patches
    are averaged back into the input.
    """
    if not isinstance(tok.norm, nn.LayerNorm):
        raise TypeError("invert_patch_tokenizer expects the pre-LayerNorm tokenizer")
    with torch.no_grad():
        w = tok.proj.weight.flatten(1).double()  # [D, P], P = C * ph * pw
        d, p = w.shape
        gamma = tok.norm.weight.double() if tok.norm.weight is not None else torch.ones(d, dtype=torch.float64)
        beta = tok.norm.bias.double() if tok.norm.bias is not None else torch.zeros(d, dtype=torch.float64)
        u = ((tokens[:, 1:].double() - beta) / gamma)  # [b, N, D]
        b, n, _ = u.shape
        pos = tok.pos[0, 1:].double()  # [N, D]
        bias = tok.proj.bias.double() if tok.proj.bias is not None else torch.zeros(d, dtype=torch.float64)
        a = torch.cat([w.expand(b, n, d, p), -u[..., None], -torch.ones(b, n, d, 1, dtype=torch.float64)],
                      dim=-1)  # [b, N, D, P + 2]
        rhs = -(pos + bias)[None, :, :, None].expand(b, n, d, 1)  # [b, N, D, 1]
        solution = torch.linalg.lstsq(a, rhs).solution[..., :p, 0]  # [b, N, P]
        size = input_shape[1:]
        ones = torch.ones(1, p, n, dtype=torch.float64)
        kernel, stride = tok.proj.kernel_size, tok.proj.stride
        summed = F.fold(solution.transpose(1, 2), size, kernel, stride=stride)  # [b, N, P] -> [b, C, H, W]
        cover = F.fold(ones, size, kernel, stride=stride)  # [1, C, H, W] patches covering each pixel
        return (summed / cover.clamp_min(1)).float()


def read_text_tokens(tok: TextTokenizer, tokens: torch.Tensor) -> torch.Tensor:
    """Tokens [b, L, D] of a TextTokenizer whose word and position embeddings are (about) known -> ids [b, L].

    Undoing the LayerNorm's affine part leaves (a - mean a) / std a for a = E[id] + pos_t; each position's
    candidates E + pos_t are normalized the same way and the one with the largest cosine is the id.
    """
    if not isinstance(tok.norm, nn.LayerNorm):
        raise TypeError("read_text_tokens expects the pre-LayerNorm tokenizer")
    with torch.no_grad():
        words = tok.words.weight.float()  # [V, D]
        d = words.shape[1]
        gamma = tok.norm.weight.float() if tok.norm.weight is not None else torch.ones(d)
        beta = tok.norm.bias.float() if tok.norm.bias is not None else torch.zeros(d)
        u = F.normalize((tokens.float() - beta) / gamma, dim=-1)  # [b, L, D] unit rows
        ids = torch.empty(tokens.shape[:2], dtype=torch.long)
        for t in range(tokens.shape[1]):
            candidates = words + tok.pos[0, t].float()  # [V, D]
            centred = F.normalize(candidates - candidates.mean(dim=1, keepdim=True), dim=1)  # [V, D]
            ids[:, t] = (u[:, t] @ centred.T).argmax(dim=1)  # [b, D] @ [D, V] -> [b, V] -> [b]
        return ids


def psnr(guess: torch.Tensor, truth: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB over a batch, the peak being the truth's value range."""
    span = float(truth.max() - truth.min()) or 1.0
    mse = float(F.mse_loss(guess.float(), truth.float()))
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(span ** 2 / mse)).item()


def ssim(guess: torch.Tensor, truth: torch.Tensor, window: int = 7) -> float:
    """Mean structural similarity over a batch [b, C, H, W] (uniform window, the truth's value range)."""
    span = float(truth.max() - truth.min()) or 1.0
    c1, c2 = (0.01 * span) ** 2, (0.03 * span) ** 2
    x, y = guess.float(), truth.float()
    k = min(window, x.shape[-2], x.shape[-1])
    mx, my = F.avg_pool2d(x, k, 1), F.avg_pool2d(y, k, 1)
    vx = F.avg_pool2d(x * x, k, 1) - mx ** 2
    vy = F.avg_pool2d(y * y, k, 1) - my ** 2
    cov = F.avg_pool2d(x * y, k, 1) - mx * my
    index = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return float(index.mean())
