"""Image <-> caption retrieval: a contrastive loss on each client's mini-batch, Recall@K on the test set.

The server returns one embedding per image and per caption slot, predictions [b, 1 + K, D]:
row 0 is the image, rows 1..K its K captions (the paper: K = 5). Sample i's captions match image i
only; labels are not needed (no labels leave the client because there are none).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mpsl.tasks.base import TASKS

RECALL_AT = (1, 5, 10)


def split_embeddings(predictions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[b, 1 + K, D] -> images [b, D], captions [b, K, D]."""
    if predictions.dim() != 3 or predictions.shape[1] < 2:
        raise ValueError(f"retrieval needs [b, 1 + K, D] embeddings, got {tuple(predictions.shape)}")
    return predictions[:, 0], predictions[:, 1:]


def contrastive_loss(predictions: torch.Tensor) -> torch.Tensor:
    """Sum over caption slots k of the mean of image->text and text->image cross-entropy over the
    b x b similarity matrix of images and the slot-k captions (the paper's loss)."""
    images, captions = split_embeddings(predictions)  # [b, D], [b, K, D]
    target = torch.arange(len(images), device=predictions.device)  # [b]: pair i is (image i, caption i)
    total = predictions.new_zeros(())
    for k in range(captions.shape[1]):
        sim = images @ captions[:, k].T  # [b, b]
        total = total + (F.cross_entropy(sim, target) + F.cross_entropy(sim.T, target)) / 2
    return total


def recall_at(predictions: torch.Tensor, ks: tuple[int, ...] = RECALL_AT, chunk: int = 1024) -> dict[str, float]:
    """Recall@K both ways over a whole test set.

    image->text: an image is found if any of its K captions ranks within the top k of all N*K captions;
    text->image: a caption is found if its image ranks within the top k of all N images. Ties count
    against the query: a rank is the number of wrong candidates scoring at least as high as the true one.
    """
    images, captions = split_embeddings(predictions.float())  # [N, D], [N, K, D]
    n, slots = captions.shape[:2]
    flat = captions.reshape(n * slots, -1)  # [N*K, D], caption j belongs to image j // K
    owner = torch.arange(n * slots) // slots  # [N*K]
    i2t_rank = torch.empty(n, dtype=torch.long)
    for s in range(0, n, chunk):
        sim = images[s:s + chunk] @ flat.T  # [c, N*K]
        own = owner[None, :] == torch.arange(s, s + len(sim))[:, None]  # [c, N*K]: the query's own captions
        best = sim.masked_fill(~own, float("-inf")).max(dim=1).values  # [c]
        i2t_rank[s:s + len(sim)] = ((sim >= best[:, None]) & ~own).sum(dim=1)
    t2i_rank = torch.empty(n * slots, dtype=torch.long)
    for s in range(0, n * slots, chunk):
        sim = flat[s:s + chunk] @ images.T  # [c, N]
        true = sim[torch.arange(len(sim)), owner[s:s + len(sim)]]  # [c]
        t2i_rank[s:s + len(sim)] = (sim >= true[:, None]).sum(dim=1) - 1  # the true image itself scores >= too
    out = {}
    for k in ks:
        out[f"i2t_r{k}"] = float((i2t_rank < k).float().mean())
    for k in ks:
        out[f"t2i_r{k}"] = float((t2i_rank < k).float().mean())
    out["recall_mean"] = sum(out.values()) / len(out)
    return out


@TASKS.register("retrieval")
class RetrievalTask:
    metric = "recall_mean"
    ablations = False

    def loss(self, predictions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return contrastive_loss(predictions)

    def correct(self, predictions: torch.Tensor, labels: torch.Tensor) -> int:
        """Images whose best-scoring caption in the mini-batch is one of their own."""
        return int(self.hits(predictions, labels))

    def hits(self, predictions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        images, captions = split_embeddings(predictions)
        sim = images @ captions.reshape(-1, captions.shape[-1]).T  # [b, b*K]
        own = torch.arange(len(images), device=predictions.device)  # [b]: image i's captions are i*K .. i*K+K-1
        return (sim.argmax(dim=1) // captions.shape[1] == own).sum()  # []

    def scores(self, predictions: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        return recall_at(predictions)
