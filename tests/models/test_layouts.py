"""Checkpoint converters are exact: the loaded encoder reproduces transformers' own forward of the same weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mpsl.config import EncoderConfig, ModelConfig, TokenizerConfig
from mpsl.data import ModalitySpec
from mpsl.errors import ModelError
from mpsl.models import build_encoder
from mpsl.models.tokenizers import build_tokenizer, resize_positions

WIDTH, DEPTH, HEADS, IMAGE, PATCH = 32, 2, 2, 16, 4


def _vit(eps: float = 1e-12):
    from transformers import ViTConfig, ViTModel

    cfg = ViTConfig(hidden_size=WIDTH, num_hidden_layers=DEPTH, num_attention_heads=HEADS, intermediate_size=4 * WIDTH,
                    image_size=IMAGE, patch_size=PATCH, layer_norm_eps=eps)
    return ViTModel(cfg, add_pooling_layer=False).eval()


def _clip():
    from transformers import CLIPVisionConfig, CLIPVisionModel

    cfg = CLIPVisionConfig(hidden_size=WIDTH, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
                           intermediate_size=4 * WIDTH, image_size=IMAGE, patch_size=PATCH)
    return CLIPVisionModel(cfg).eval()


def _randomize(model: torch.nn.Module) -> None:
    """Random values everywhere (norms and biases too), so that no identity init hides a wrong mapping."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)


def _ours(source: str, path: Path, **cfg) -> tuple[torch.nn.Module, torch.nn.Module]:
    enc = EncoderConfig(source=source, path=str(path), trainable_blocks=0, **cfg)
    bundle = build_encoder(enc)
    tokenizer = build_tokenizer(ModalitySpec("image", (3, IMAGE, IMAGE)),
                                ModelConfig(encoder=enc, image=TokenizerConfig(patch=(PATCH, PATCH))), bundle)
    return bundle.encoder.eval(), tokenizer.eval()


PIXELS = torch.randn(2, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(0))


def test_hugging_face_vit_directory(tmp_path: Path) -> None:
    # Prepare
    model = _vit()
    _randomize(model)
    model.save_pretrained(tmp_path / "vit")

    # Execute
    encoder, tokenizer = _ours("hf-vit", tmp_path / "vit")

    # Assert: embeddings and encoder both match ViTModel
    with torch.no_grad():
        torch.testing.assert_close(tokenizer(PIXELS), model.embeddings(PIXELS), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(encoder(tokenizer(PIXELS)), model(PIXELS).last_hidden_state, atol=1e-5, rtol=1e-5)


def test_hugging_face_clip_vision_directory(tmp_path: Path) -> None:
    model = _clip()
    _randomize(model)
    model.save_pretrained(tmp_path / "clip")

    encoder, tokenizer = _ours("hf-clip", tmp_path / "clip")

    with torch.no_grad():
        hidden = model(PIXELS).last_hidden_state  # before post_layernorm, which we apply to every token
        torch.testing.assert_close(encoder(tokenizer(PIXELS)), model.post_layernorm(hidden), atol=1e-5, rtol=1e-5)


def test_hugging_face_ast_directory(tmp_path: Path) -> None:
    from transformers import ASTConfig, ASTModel

    model = ASTModel(ASTConfig(hidden_size=WIDTH, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
                               intermediate_size=4 * WIDTH, num_mel_bins=16, max_length=24, patch_size=4)).eval()
    _randomize(model)
    model.save_pretrained(tmp_path / "ast")
    tokens = torch.randn(2, 9, WIDTH)

    encoder, _ = _ours("hf-vit", tmp_path / "ast")

    with torch.no_grad():
        reference = tokens
        for layer in model.layers:
            reference = layer(reference)
        torch.testing.assert_close(encoder(tokens), model.layernorm(reference), atol=1e-5, rtol=1e-5)


def _timm_state(model) -> dict[str, torch.Tensor]:
    """The ViT's weights renamed into timm's layout, q/k/v fused, as Meta-Transformer ships them."""
    s = model.state_dict()
    out = {"patch_embed.proj.weight": s["embeddings.patch_embeddings.projection.weight"],
           "patch_embed.proj.bias": s["embeddings.patch_embeddings.projection.bias"],
           "cls_token": s["embeddings.cls_token"], "pos_embed": s["embeddings.position_embeddings"],
           "norm.weight": s["layernorm.weight"], "norm.bias": s["layernorm.bias"]}
    for i in range(DEPTH):
        p = f"layers.{i}."
        for leaf in ("weight", "bias"):
            out[f"blocks.{i}.norm1.{leaf}"] = s[p + f"layernorm_before.{leaf}"]
            out[f"blocks.{i}.norm2.{leaf}"] = s[p + f"layernorm_after.{leaf}"]
            out[f"blocks.{i}.attn.qkv.{leaf}"] = torch.cat([s[p + f"attention.{x}_proj.{leaf}"] for x in "qkv"])
            out[f"blocks.{i}.attn.proj.{leaf}"] = s[p + f"attention.o_proj.{leaf}"]
            out[f"blocks.{i}.mlp.fc1.{leaf}"] = s[p + f"mlp.fc1.{leaf}"]
            out[f"blocks.{i}.mlp.fc2.{leaf}"] = s[p + f"mlp.fc2.{leaf}"]
    return out


def test_timm_meta_transformer_checkpoint(tmp_path: Path) -> None:
    model = _vit(eps=1e-6)  # timm's LayerNorm eps
    _randomize(model)
    torch.save(_timm_state(model), tmp_path / "encoder.pth")

    encoder, tokenizer = _ours("timm", tmp_path / "encoder.pth", heads=HEADS)

    with torch.no_grad():
        torch.testing.assert_close(encoder(tokenizer(PIXELS)), model(PIXELS).last_hidden_state, atol=1e-5, rtol=1e-5)


def _open_clip_state(model) -> dict[str, torch.Tensor]:
    s = model.state_dict()
    out = {"visual.conv1.weight": s["embeddings.patch_embedding.weight"],
           "visual.class_embedding": s["embeddings.class_embedding"],
           "visual.positional_embedding": s["embeddings.position_embedding.weight"],
           "visual.ln_pre.weight": s["pre_layrnorm.weight"], "visual.ln_pre.bias": s["pre_layrnorm.bias"],
           "visual.ln_post.weight": s["post_layernorm.weight"], "visual.ln_post.bias": s["post_layernorm.bias"],
           "visual.proj": torch.randn(WIDTH, 16), "logit_scale": torch.tensor(1.0)}
    for i in range(DEPTH):
        p, q = f"encoder.layers.{i}.", f"visual.transformer.resblocks.{i}."
        out[q + "attn.in_proj_weight"] = torch.cat([s[p + f"self_attn.{x}_proj.weight"] for x in "qkv"])
        out[q + "attn.in_proj_bias"] = torch.cat([s[p + f"self_attn.{x}_proj.bias"] for x in "qkv"])
        for leaf in ("weight", "bias"):
            out[q + f"ln_1.{leaf}"] = s[p + f"layer_norm1.{leaf}"]
            out[q + f"ln_2.{leaf}"] = s[p + f"layer_norm2.{leaf}"]
            out[q + f"attn.out_proj.{leaf}"] = s[p + f"self_attn.out_proj.{leaf}"]
            out[q + f"mlp.c_fc.{leaf}"] = s[p + f"mlp.fc1.{leaf}"]
            out[q + f"mlp.c_proj.{leaf}"] = s[p + f"mlp.fc2.{leaf}"]
    return out


def test_open_clip_checkpoint(tmp_path: Path) -> None:
    model = _clip()  # quick_gelu, eps 1e-5, like OpenAI CLIP weights in open_clip
    _randomize(model)
    torch.save({"state_dict": _open_clip_state(model)}, tmp_path / "open_clip.pt")

    encoder, tokenizer = _ours("open-clip", tmp_path / "open_clip.pt", heads=HEADS, act="quick_gelu")

    with torch.no_grad():
        reference = model.post_layernorm(model(PIXELS).last_hidden_state)
        torch.testing.assert_close(encoder(tokenizer(PIXELS)), reference, atol=1e-5, rtol=1e-5)


def test_missing_or_unplaceable_keys_are_named(tmp_path: Path) -> None:
    state = _timm_state(_vit())
    missing = {k: v for k, v in state.items() if k != "blocks.1.attn.qkv.weight"}
    torch.save(missing, tmp_path / "missing.pth")
    torch.save({**state, "blocks.0.attn.rel_pos": torch.zeros(3)}, tmp_path / "extra.pth")

    with pytest.raises(ModelError, match=r"missing key 'blocks\.1\.attn\.qkv\.weight'"):
        build_encoder(EncoderConfig(source="timm", path=str(tmp_path / "missing.pth"), heads=HEADS))
    with pytest.raises(ModelError, match=r"do not fit this layout.*blocks\.0\.attn\.rel_pos"):
        build_encoder(EncoderConfig(source="timm", path=str(tmp_path / "extra.pth"), heads=HEADS))
    with pytest.raises(ModelError, match="does not exist"):
        build_encoder(EncoderConfig(source="timm", path=str(tmp_path / "nope.pth")))


def test_positions_are_resized_to_a_new_grid_and_kept_on_the_same_one() -> None:
    pos = torch.randn(1 + 4 * 4, WIDTH)

    same, bigger = resize_positions(pos, (4, 4)), resize_positions(pos, (6, 3))

    assert same is pos
    assert bigger.shape == (1 + 6 * 3, WIDTH) and torch.equal(bigger[0], pos[0])


@pytest.mark.parametrize("preset", ["vit-ti16", "vit-b16"])
def test_presets_build_random_vits_of_the_papers_shapes(preset: str) -> None:
    bundle = build_encoder(EncoderConfig(source="vit", preset=preset))

    blocks = bundle.encoder.blocks
    assert bundle.width == {"vit-ti16": 192, "vit-b16": 768}[preset] and len(blocks) == 12
    assert blocks[0].attn.heads == {"vit-ti16": 3, "vit-b16": 12}[preset]
    trainable = [any(p.requires_grad for p in b.parameters()) for b in blocks]
    assert trainable == [False] * 6 + [True] * 6  # default: the last half, as the paper
