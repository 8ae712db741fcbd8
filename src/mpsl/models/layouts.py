"""ViT-family checkpoints in their own key layouts, converted exactly onto `ViTBlock`s.

Each converter maps a state dict onto our layout (`blocks.{i}.norm1 | attn.qkv | attn.proj |
norm2 | mlp.fc1 | mlp.fc2`, final `norm`) and pulls out the patch embedding the image tokenizer
starts from. Keys that a layout requires but the file lacks, and keys it cannot place, are an
error that names them: never a silent partial load.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from mpsl.errors import ModelError
from mpsl.registry import Registry

Tensors = dict[str, torch.Tensor]
PARTS = ("norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
         "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias")


@dataclass
class PatchEmbedding:
    """What an image tokenizer can start from: conv [D, C, p, p] (+ bias), CLS [D], positions [T, D], pre-norm."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    cls: torch.Tensor
    pos: torch.Tensor
    pre_norm: tuple[torch.Tensor, torch.Tensor] | None


@dataclass
class VitWeights:
    blocks: Tensors  # blocks.{i}.<part>
    norm: tuple[torch.Tensor, torch.Tensor] | None  # final LayerNorm (weight, bias)
    embed: PatchEmbedding | None

    @property
    def width(self) -> int:
        return self.blocks["blocks.0.norm1.weight"].shape[0]

    @property
    def depth(self) -> int:
        return 1 + max(int(k.split(".")[1]) for k in self.blocks)

    @property
    def mlp_ratio(self) -> float:
        return self.blocks["blocks.0.mlp.fc1.weight"].shape[0] / self.width


class _Keys:
    """Takes tensors out of a state dict by name and reports what it never took."""

    def __init__(self, state: Tensors, source: str) -> None:
        self.state, self.source, self.taken = state, source, set()

    def take(self, key: str) -> torch.Tensor:
        if key not in self.state:
            raise ModelError(f"{self.source}: missing key {key!r} for this checkpoint layout")
        self.taken.add(key)
        return self.state[key]

    def maybe(self, key: str) -> torch.Tensor | None:
        return self.take(key) if key in self.state else None

    def depth(self, pattern: str) -> int:
        found = {int(m.group(1)) for k in self.state if (m := re.match(pattern, k))}
        if not found:
            raise ModelError(f"{self.source}: no transformer blocks found (expected keys like {pattern})")
        if found != set(range(len(found))):
            raise ModelError(f"{self.source}: block indices are not 0..{len(found) - 1}: {sorted(found)}")
        return len(found)

    def check_all_used(self, ignore: tuple[str, ...] = ()) -> None:
        left = sorted(k for k in self.state if k not in self.taken and not k.startswith(ignore))
        if left:
            raise ModelError(f"{self.source}: {len(left)} keys do not fit this layout, e.g. {left[:5]}")


def _blocks(keys: _Keys, depth: int, name: Callable[[int, str], list[str]]) -> Tensors:
    """Our block layout; `name(i, part)` lists the source keys (several are concatenated, e.g. q, k, v)."""
    out: Tensors = {}
    for i in range(depth):
        for part in PARTS:
            sources = name(i, part)
            tensors = [keys.take(s) for s in sources]
            out[f"blocks.{i}.{part}"] = tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=0)
    return out


def from_timm(state: Tensors, source: str) -> VitWeights:
    """timm ViT / Meta-Transformer encoder: already our layout (`blocks.{i}.attn.qkv` fused)."""
    keys = _Keys(state, source)
    depth = keys.depth(r"blocks\.(\d+)\.")
    blocks = _blocks(keys, depth, lambda i, part: [f"blocks.{i}.{part}"])
    norm = (keys.take("norm.weight"), keys.take("norm.bias")) if "norm.weight" in state else None
    embed = None
    if "patch_embed.proj.weight" in state:
        pos = keys.take("pos_embed")[0]  # [1, T, D] -> [T, D]
        embed = PatchEmbedding(keys.take("patch_embed.proj.weight"), keys.maybe("patch_embed.proj.bias"),
                               keys.take("cls_token").reshape(-1), pos, None)
    keys.check_all_used(ignore=("head.", "fc_norm.", "pre_logits."))
    return VitWeights(blocks, norm, embed)


_OPEN_CLIP = {"norm1": "ln_1", "norm2": "ln_2", "attn.proj": "attn.out_proj", "mlp.fc1": "mlp.c_fc",
              "mlp.fc2": "mlp.c_proj"}


def from_open_clip(state: Tensors, source: str) -> VitWeights:
    """open_clip's visual tower (`visual.transformer.resblocks.{i}`, fused `attn.in_proj_weight`)."""
    keys = _Keys(state, source)
    prefix = "visual.transformer.resblocks"
    depth = keys.depth(prefix.replace(".", r"\.") + r"\.(\d+)\.")

    def name(i: int, part: str) -> list[str]:
        module, _, leaf = part.rpartition(".")
        if module == "attn.qkv":
            return [f"{prefix}.{i}.attn.in_proj_{leaf}"]
        return [f"{prefix}.{i}.{_OPEN_CLIP[module]}.{leaf}"]

    blocks = _blocks(keys, depth, name)
    norm = (keys.take("visual.ln_post.weight"), keys.take("visual.ln_post.bias"))
    embed = PatchEmbedding(keys.take("visual.conv1.weight"), None, keys.take("visual.class_embedding"),
                           keys.take("visual.positional_embedding"),
                           (keys.take("visual.ln_pre.weight"), keys.take("visual.ln_pre.bias")))
    keys.check_all_used(ignore=("visual.proj", "transformer.", "token_embedding.", "positional_embedding",
                                "ln_final.", "text_projection", "logit_scale", "logit_bias", "visual.attn_pool",
                                "visual.ln_post"))
    return VitWeights(blocks, norm, embed)


_HF_VIT = {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.o_proj",
           "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
_HF_CLIP = {"norm1": "layer_norm1", "norm2": "layer_norm2", "attn.proj": "self_attn.out_proj",
            "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}


def _hf(state: Tensors, source: str, prefix: str, table: dict[str, str], attn: str) -> tuple[_Keys, Tensors]:
    keys = _Keys(state, source)
    depth = keys.depth(prefix.replace(".", r"\.") + r"\.(\d+)\.")

    def name(i: int, part: str) -> list[str]:
        module, _, leaf = part.rpartition(".")
        if module == "attn.qkv":
            return [f"{prefix}.{i}.{attn}.{p}_proj.{leaf}" for p in "qkv"]
        return [f"{prefix}.{i}.{table[module]}.{leaf}"]

    return keys, _blocks(keys, depth, name)


def from_hf_vit(state: Tensors, source: str) -> VitWeights:
    """transformers' ViTModel or ASTModel state (separate q, k, v projections)."""
    keys, blocks = _hf(state, source, "layers", _HF_VIT, "attention")
    norm = (keys.take("layernorm.weight"), keys.take("layernorm.bias"))
    pos = keys.take("embeddings.position_embeddings")[0]  # [1, T, D] -> [T, D]
    embed = PatchEmbedding(keys.take("embeddings.patch_embeddings.projection.weight"),
                           keys.take("embeddings.patch_embeddings.projection.bias"),
                           keys.take("embeddings.cls_token").reshape(-1), pos, None)
    keys.check_all_used(ignore=("pooler.", "embeddings.mask_token", "embeddings.distillation_token"))
    return VitWeights(blocks, norm, embed)


def from_hf_clip(state: Tensors, source: str) -> VitWeights:
    """transformers' CLIPVisionModel state (separate q, k, v projections, pre- and post-LayerNorm)."""
    keys, blocks = _hf(state, source, "encoder.layers", _HF_CLIP, "self_attn")
    norm = (keys.take("post_layernorm.weight"), keys.take("post_layernorm.bias"))
    embed = PatchEmbedding(keys.take("embeddings.patch_embedding.weight"), None,
                           keys.take("embeddings.class_embedding"), keys.take("embeddings.position_embedding.weight"),
                           (keys.take("pre_layrnorm.weight"), keys.take("pre_layrnorm.bias")))
    keys.check_all_used(ignore=("embeddings.position_ids",))
    return VitWeights(blocks, norm, embed)


LAYOUTS: Registry[Callable[[Tensors, str], VitWeights]] = Registry("checkpoint layout")
LAYOUTS.register("timm")(from_timm)
LAYOUTS.register("open_clip")(from_open_clip)
LAYOUTS.register("hf-vit")(from_hf_vit)
LAYOUTS.register("hf-clip")(from_hf_clip)


def read_state_dict(path: Path) -> Tensors:
    """A .pth/.pt/.bin (torch, weights only) or .safetensors file; unwraps {"state_dict": ...} and "module."."""
    if not path.is_file():
        raise ModelError(f"checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch and safetensors raise many types for a damaged file
        raise ModelError(f"checkpoint {path} cannot be read: {str(exc).splitlines()[0]}") from None
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"checkpoint {path} is not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}
