"""ViT-family encoder sources: random ViTs of the paper's backbone presets, and local checkpoints in
the layouts people have (timm / Meta-Transformer .pth, open_clip, Hugging Face ViT, AST, CLIP)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from mpsl.config import EncoderConfig
from mpsl.errors import ConfigError, ModelError
from mpsl.models.encoder import ENCODERS, EncoderBundle, SharedEncoder
from mpsl.models.layouts import LAYOUTS, VitWeights, read_state_dict
from mpsl.models.presets import PRESETS
from mpsl.models.vit import ViTBlock
from mpsl.packaged import local_model


def _shape(cfg: EncoderConfig) -> tuple[int, int, int, float]:
    """(width, depth, heads, mlp_ratio) from the preset if one is named, else from the config."""
    if cfg.preset is not None:
        p = PRESETS.get(cfg.preset)
        return p.width, p.depth, p.heads, p.mlp_ratio
    return cfg.width, cfg.depth, cfg.heads, cfg.mlp_ratio


def _heads(cfg: EncoderConfig, width: int, depth: int) -> int:
    """A checkpoint's head count is not in its weights: the named preset, a preset of that shape, or `heads`."""
    if cfg.preset is not None:
        p = PRESETS.get(cfg.preset)
        if (p.width, p.depth) != (width, depth):
            raise ModelError(f"model.encoder.preset {cfg.preset} is {p.width} wide and {p.depth} deep, "
                             f"the checkpoint {width} and {depth}")
        return p.heads
    matching = [PRESETS.get(n).heads for n in PRESETS if (PRESETS.get(n).width, PRESETS.get(n).depth) == (width, depth)]
    heads = matching[0] if matching else cfg.heads
    if width % heads:
        raise ConfigError(f"model.encoder.heads: {heads} does not divide the checkpoint's width {width}")
    return heads


def vit_bundle(weights: VitWeights, heads: int, act: str, eps: float, source: str, pre_norm: bool) -> EncoderBundle:
    """Build ViT blocks of the checkpoint's shape and load them strictly."""
    blocks = nn.ModuleList(ViTBlock(weights.width, heads, weights.mlp_ratio, act, eps) for _ in range(weights.depth))
    holder = nn.Module()
    holder.blocks = blocks
    missing, unexpected = holder.load_state_dict(weights.blocks, strict=False)
    if missing or unexpected:
        raise ModelError(f"{source}: blocks do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
    norm = None
    if weights.norm is not None:
        norm = nn.LayerNorm(weights.width, eps=eps)
        norm.weight.data.copy_(weights.norm[0])
        norm.bias.data.copy_(weights.norm[1])
    embed_norm = None
    if weights.embed is not None and weights.embed.pre_norm is not None:
        embed_norm = nn.LayerNorm(weights.width, eps=eps)
        embed_norm.weight.data.copy_(weights.embed.pre_norm[0])
        embed_norm.bias.data.copy_(weights.embed.pre_norm[1])
    return EncoderBundle(SharedEncoder(blocks, weights.width, norm), None, embed_norm, None,
                         patch_embed=weights.embed, pre_norm=pre_norm)


@ENCODERS.register("vit")
def _random_vit(cfg: EncoderConfig) -> EncoderBundle:
    """Random-init pre-norm ViT blocks (+ final norm) of a preset or the configured shape."""
    width, depth, heads, mlp_ratio = _shape(cfg)
    blocks = nn.ModuleList(ViTBlock(width, heads, mlp_ratio, cfg.act) for _ in range(depth))
    for block in blocks:
        block.apply(_init_vit)
    return EncoderBundle(SharedEncoder(blocks, width, nn.LayerNorm(width, eps=1e-6)), None, None, None,
                         pre_norm=False)


def _init_vit(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)


def _path(cfg: EncoderConfig) -> Path:
    if not cfg.path:
        raise ConfigError(f"model.encoder.path: source {cfg.source} needs a local checkpoint")
    return Path(cfg.path).expanduser()


def _model_dir(cfg: EncoderConfig) -> Path:
    """A Hugging Face directory: a local path, or a model id in the local Hugging Face cache."""
    if not cfg.path:
        raise ConfigError(f"model.encoder.path: source {cfg.source} needs a local model directory or a model id in "
                          "the local Hugging Face cache")
    return local_model(cfg.path, "model.encoder.path")


@ENCODERS.register("timm")
def _timm(cfg: EncoderConfig) -> EncoderBundle:
    """A timm ViT state dict, e.g. Meta-Transformer's encoder .pth (ViT-B/16, ViT-L/14)."""
    path = _path(cfg)
    weights = LAYOUTS.get("timm")(read_state_dict(path), str(path))
    return vit_bundle(weights, _heads(cfg, weights.width, weights.depth), cfg.act, 1e-6, str(path), pre_norm=False)


@ENCODERS.register("open-clip")
def _open_clip(cfg: EncoderConfig) -> EncoderBundle:
    """An open_clip checkpoint's visual tower; LAION weights use GELU, OpenAI's QuickGELU (`act`)."""
    path = _path(cfg)
    weights = LAYOUTS.get("open_clip")(read_state_dict(path), str(path))
    return vit_bundle(weights, _heads(cfg, weights.width, weights.depth), cfg.act, 1e-5, str(path), pre_norm=True)


def _hf_model(path: Path, kinds: dict[str, str]) -> nn.Module:
    """Load a local Hugging Face directory with transformers (which knows every version of its key names)."""
    import transformers
    from transformers import AutoConfig

    if not (path / "config.json").is_file():
        raise ModelError(f"no config.json in {path}: expected a local Hugging Face model directory")
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    cls_name = kinds.get(config.model_type)
    if cls_name is None:
        raise ModelError(f"{path} holds a {config.model_type!r} model; this source reads {', '.join(kinds)}")
    try:
        return getattr(transformers, cls_name).from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"cannot load the model in {path}: {str(exc).splitlines()[0]}") from None


@ENCODERS.register("hf-vit")
def _hf_vit(cfg: EncoderConfig) -> EncoderBundle:
    """A local Hugging Face ViT or AST (Audio Spectrogram Transformer) directory."""
    path = _model_dir(cfg)
    model = _hf_model(path, {"vit": "ViTModel", "audio-spectrogram-transformer": "ASTModel"})
    weights = LAYOUTS.get("hf-vit")(model.state_dict(), str(path))
    if model.config.model_type != "vit":
        weights.embed = None  # an AST's patch embedding is for spectrograms; image tokenizers start fresh
    c = model.config
    return vit_bundle(weights, c.num_attention_heads, c.hidden_act, c.layer_norm_eps, str(path), pre_norm=False)


@ENCODERS.register("hf-clip")
def _hf_clip(cfg: EncoderConfig) -> EncoderBundle:
    """A local Hugging Face CLIP directory (its vision tower) or CLIP vision model."""
    path = _model_dir(cfg)
    model = _hf_model(path, {"clip": "CLIPVisionModel", "clip_vision_model": "CLIPVisionModel"})
    weights = LAYOUTS.get("hf-clip")(model.state_dict(), str(path))
    c = model.config
    return vit_bundle(weights, c.num_attention_heads, c.hidden_act, c.layer_norm_eps, str(path), pre_norm=True)
