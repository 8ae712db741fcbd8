"""Client-side modality tokenizers: raw inputs -> cut-layer tokens [b, T, D], each led by a CLS token."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from mpsl.config import ModelConfig
from mpsl.data.spec import ModalitySpec
from mpsl.errors import ConfigError, ModelError
from mpsl.models.encoder import EncoderBundle
from mpsl.models.layouts import PatchEmbedding
from mpsl.packaged import local_model
from mpsl.registry import Registry


def _pre_norm(bundle: EncoderBundle) -> nn.Module:
    """The checkpoint's input LayerNorm (a client-owned copy), so tokens land in the scale its blocks expect;
    none for plain ViTs, whose blocks normalize their own input."""
    if not bundle.pre_norm:
        return nn.Identity()
    like = bundle.embed_norm
    norm = nn.LayerNorm(bundle.width, eps=like.eps if like is not None else 1e-6)
    if like is not None:
        norm.load_state_dict(like.state_dict())
    return norm


class PatchTokenizer(nn.Module):
    """Images and spectrograms alike: conv patches + CLS + learned positions + pre-LayerNorm.

    Input [b, C, H, W] (a spectrogram is [b, 1, mels, frames]); output [b, 1 + N, D].
    """

    def __init__(
        self,
        in_chans: int,
        input_hw: tuple[int, int],
        patch: tuple[int, int],
        stride: tuple[int, int],
        width: int,
        norm: nn.Module,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, width, kernel_size=patch, stride=stride, bias=bias)
        grid_h = (input_hw[0] - patch[0]) // stride[0] + 1
        grid_w = (input_hw[1] - patch[1]) // stride[1] + 1
        if grid_h < 1 or grid_w < 1:
            raise ValueError(f"patch {patch} is larger than the input {input_hw}")
        self.num_tokens = 1 + grid_h * grid_w
        self._grid = (grid_h, grid_w)
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.pos = nn.Parameter(torch.zeros(1, self.num_tokens, width))
        nn.init.trunc_normal_(self.pos, std=0.02)
        nn.init.trunc_normal_(self.cls, std=0.02)
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.proj(x)  # [b, D, gh, gw]
        patches = patches.flatten(2).transpose(1, 2)  # [b, N, D]
        cls = self.cls.expand(patches.shape[0], -1, -1)  # [b, 1, D]
        tokens = torch.cat([cls, patches], dim=1) + self.pos  # [b, 1 + N, D]
        return self.norm(tokens)

    @torch.no_grad()
    def load_embedding(self, embed: PatchEmbedding) -> None:
        """Start from a checkpoint's patch embedding: conv (summed over RGB for 1-channel inputs), CLS, and
        positions, bicubically resized when this input gives another patch grid."""
        weight = embed.weight  # [D, C, p, p]
        if weight.shape[1] != self.proj.in_channels:
            if self.proj.in_channels != 1:
                raise ModelError(f"the checkpoint's patch embedding takes {weight.shape[1]} channels, "
                                 f"the input has {self.proj.in_channels}")
            weight = weight.sum(dim=1, keepdim=True)  # [D, 3, p, p] -> [D, 1, p, p], as timm does for grayscale
        if weight.shape != self.proj.weight.shape:
            raise ModelError(f"the checkpoint's patch embedding is {tuple(weight.shape)}, the tokenizer's "
                             f"{tuple(self.proj.weight.shape)} (set model.image.patch to the checkpoint's patch size)")
        self.proj.weight.copy_(weight)
        if self.proj.bias is not None and embed.bias is not None:
            self.proj.bias.copy_(embed.bias)
        self.cls.copy_(embed.cls.reshape(1, 1, -1))
        self.pos.copy_(resize_positions(embed.pos, self._grid).unsqueeze(0))


def resize_positions(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """[1 + n*n, D] CLS + square-grid positions -> [1 + gh*gw, D], bicubic over the grid (timm's recipe)."""
    cls, patches = pos[:1], pos[1:]  # [1, D], [n*n, D]
    n = math.isqrt(patches.shape[0])
    if n * n != patches.shape[0]:
        raise ModelError(f"the checkpoint's {patches.shape[0]} patch positions are not a square grid")
    if (n, n) == grid:
        return pos
    square = patches.reshape(1, n, n, -1).permute(0, 3, 1, 2)  # [1, D, n, n]
    resized = nn.functional.interpolate(square, size=grid, mode="bicubic", align_corners=False)  # [1, D, gh, gw]
    return torch.cat([cls, resized.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)])  # [1 + gh*gw, D]


class TextTokenizer(nn.Module):
    """WordPiece ids [b, L] (first id is [CLS]) -> [b, L, D] through the encoder's own word embeddings.

    Reusing the pretrained vocabulary means text needs no separate text encoder on the client.
    """

    def __init__(self, embeddings: nn.Embedding, max_len: int, norm: nn.Module) -> None:
        super().__init__()
        self.words = nn.Embedding.from_pretrained(embeddings.weight.detach().clone(), freeze=False)
        width = embeddings.embedding_dim
        self.num_tokens = max_len
        self.pos = nn.Parameter(torch.zeros(1, max_len, width))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.norm = norm

    def check_inputs(self, ids: torch.Tensor) -> None:
        """Refuse ids outside the vocabulary with a message that names the fix (batched clients call this on all
        clients' ids at once: inside vmap the check cannot read values)."""
        if ids.numel() and not ids.is_meta and int(ids.max()) >= self.words.num_embeddings:
            raise ModelError(f"text token id {int(ids.max())} is outside the encoder's vocabulary of "
                             f"{self.words.num_embeddings}: data.text_tokenizer must be the encoder's own tokenizer")

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if not torch._C._functorch.is_batchedtensor(ids):  # under vmap the caller has checked every client's ids
            self.check_inputs(ids)
        tokens = self.words(ids) + self.pos[:, : ids.shape[1]]  # [b, L, D]
        return self.norm(tokens)


class SentenceTokenizer(nn.Module):
    """The paper's text recipe: a frozen sentence encoder's vectors [b, S, E] (CLIP: E = 512, computed on the
    client, outside its trainable state) zero-padded to the width, one token per sentence: [b, S, D].

    Narrower encoders than E keep the first D components.
    """

    def __init__(self, num_sentences: int, width: int, norm: nn.Module) -> None:
        super().__init__()
        self.width = width
        self.num_tokens = num_sentences
        self.norm = norm

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        e = vectors.shape[-1]
        padded = nn.functional.pad(vectors, (0, self.width - e)) if e <= self.width else vectors[..., : self.width]
        return self.norm(padded)  # [b, S, E] -> [b, S, D]


class ClipTextTokenizer(nn.Module):
    """The paper's text recipe end to end on the client: CLIP token ids [b, S, L] -> the frozen CLIP text
    tower's sentence vectors [b, S, E] -> zero-padded tokens [b, S, D], one per sentence.

    The text tower never trains and is never averaged or sent: its parameters do not require grad.
    """

    def __init__(self, text_model: nn.Module, sentences: SentenceTokenizer) -> None:
        super().__init__()
        self.text_model = text_model.eval().requires_grad_(False)
        self.sentences = sentences
        self.num_tokens = sentences.num_tokens

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        b, s, length = ids.shape
        with torch.no_grad():
            vectors = self.text_model(input_ids=ids.reshape(b * s, length)).text_embeds  # [b*S, E]
        return self.sentences(vectors.reshape(b, s, -1))  # [b, S, E] -> [b, S, D]

    def train(self, mode: bool = True) -> ClipTextTokenizer:
        super().train(mode)
        self.text_model.eval()  # frozen: no dropout, whatever the client's mode
        return self


def load_clip_text(path: str) -> nn.Module:
    """A local Hugging Face CLIP directory's text tower with its projection; never a hub download."""
    from pathlib import Path

    from transformers import CLIPTextModelWithProjection
    from transformers.utils import logging as hf_logging

    path = str(local_model(path, "model.text_encoder"))
    if not (Path(path) / "config.json").is_file():
        raise ModelError(f"model.text_encoder: no config.json in {path}: expected a local CLIP directory")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a full CLIP directory also holds the vision tower, unused here
    try:
        return CLIPTextModelWithProjection.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"model.text_encoder: cannot load CLIP's text tower from {path}: "
                         f"{str(exc).splitlines()[0]}") from None
    finally:
        hf_logging.set_verbosity(verbosity)


TokenizerBuilder = Callable[[ModalitySpec, ModelConfig, EncoderBundle], nn.Module]
TOKENIZERS: Registry[TokenizerBuilder] = Registry("modality kind")


def _patch_builder(section: str, from_checkpoint: bool) -> TokenizerBuilder:
    def build(spec: ModalitySpec, cfg: ModelConfig, bundle: EncoderBundle) -> nn.Module:
        tok = getattr(cfg, section)
        c, h, w = spec.shape
        embed = bundle.patch_embed if from_checkpoint else None
        tokenizer = PatchTokenizer(c, (h, w), tok.patch, tok.stride or tok.patch, bundle.width, _pre_norm(bundle),
                                   bias=embed is not None and embed.bias is not None)
        if embed is not None:
            tokenizer.load_embedding(embed)
        return tokenizer

    return build


TOKENIZERS.register("image")(_patch_builder("image", from_checkpoint=True))
TOKENIZERS.register("audio")(_patch_builder("audio", from_checkpoint=False))  # positions start fresh (paper)


@TOKENIZERS.register("text")
def _text(spec: ModalitySpec, cfg: ModelConfig, bundle: EncoderBundle) -> nn.Module:
    if bundle.word_embeddings is None:
        raise ValueError("text needs an encoder source with word embeddings")
    (max_len,) = spec.shape
    return TextTokenizer(bundle.word_embeddings, max_len, _pre_norm(bundle))


@TOKENIZERS.register("sentence")
def _sentence(spec: ModalitySpec, cfg: ModelConfig, bundle: EncoderBundle) -> nn.Module:
    num_sentences, _dim = spec.shape
    return SentenceTokenizer(num_sentences, bundle.width, _pre_norm(bundle))


@TOKENIZERS.register("clip-text")
def _clip_text(spec: ModalitySpec, cfg: ModelConfig, bundle: EncoderBundle) -> nn.Module:
    if cfg.text_encoder is None:
        raise ConfigError("model.text_encoder: a clip-text modality needs the path of a local CLIP directory")
    num_sentences, _length = spec.shape
    return ClipTextTokenizer(load_clip_text(cfg.text_encoder),
                             SentenceTokenizer(num_sentences, bundle.width, _pre_norm(bundle)))


def build_tokenizer(spec: ModalitySpec, cfg: ModelConfig, bundle: EncoderBundle) -> nn.Module:
    return TOKENIZERS.get(spec.kind)(spec, cfg, bundle)
