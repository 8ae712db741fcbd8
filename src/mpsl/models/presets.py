"""The paper's backbone sweep as named architecture shapes (ViT naming: width / depth / heads / patch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mpsl.registry import Registry


@dataclass(frozen=True)
class ArchPreset:
    width: int
    depth: int
    heads: int
    patch: int
    mlp_ratio: float = 4.0


PRESETS: Registry[ArchPreset] = Registry("preset", config_keys=("model.encoder.preset",))
for _name, _preset in {
    "vit-ti16": ArchPreset(192, 12, 3, 16),
    "vit-s16": ArchPreset(384, 12, 6, 16),
    "vit-b16": ArchPreset(768, 12, 12, 16),
    "vit-l14": ArchPreset(1024, 24, 16, 14),
    "vit-h14": ArchPreset(1280, 32, 16, 14),
}.items():
    PRESETS.register(_name)(_preset)


def random_encoder_overrides(name: str) -> dict[str, Any]:
    """Config overrides for a random-init encoder of preset `name`, the last half of its blocks trainable
    (the paper's policy): what cost and scaling studies build, on the meta device."""
    p = PRESETS.get(name)
    return {"model.encoder.source": "random", "model.encoder.width": p.width, "model.encoder.depth": p.depth,
            "model.encoder.heads": p.heads, "model.encoder.mlp_ratio": p.mlp_ratio,
            "model.encoder.trainable_blocks": p.depth // 2}
