"""Task heads, chosen by the dataset's task: they read the per-modality features [b, M, D]."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from mpsl.config import ModelConfig
from mpsl.data.spec import DatasetSpec
from mpsl.registry import Registry


class ClassifierHead(nn.Module):
    """Average the modality CLS features, then a linear classifier: [b, M, D] -> [b, C]."""

    def __init__(self, width: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(width, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features.mean(dim=1))  # [b, M, D] -> [b, D] -> [b, C]


class RetrievalHead(nn.Module):
    """Embeddings [b, 1 + K, D] -> the same, optionally L2-normalized, with the image row scaled by
    1 / temperature so that image . caption is the similarity the contrastive loss reads.

    Paper: raw dot products (no normalization, temperature 1). CLIP style: normalized, with a learnable
    temperature starting at 0.07 (kept as its log, clamped to at most 100x as CLIP does).
    """

    def __init__(self, normalize: bool, temperature: float, learn_temperature: bool) -> None:
        super().__init__()
        self.normalize = normalize
        log_scale = torch.tensor(math.log(1.0 / temperature))
        if learn_temperature:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            features = nn.functional.normalize(features, dim=-1)  # [b, 1 + K, D], unit rows
        scale = self.log_scale.clamp(max=math.log(100.0)).exp()
        return torch.cat([features[:, :1] * scale, features[:, 1:]], dim=1)  # image row scaled: [b, 1 + K, D]


HeadBuilder = Callable[[int, DatasetSpec, ModelConfig], nn.Module]
HEADS: Registry[HeadBuilder] = Registry("task head")
HEADS.register("classification")(lambda width, spec, cfg: ClassifierHead(width, spec.num_classes))
HEADS.register("retrieval")(lambda width, spec, cfg: RetrievalHead(
    cfg.retrieval.normalize, cfg.retrieval.temperature, cfg.retrieval.learn_temperature))


def build_head(width: int, spec: DatasetSpec, cfg: ModelConfig) -> nn.Module:
    return HEADS.get(spec.task)(width, spec, cfg)
