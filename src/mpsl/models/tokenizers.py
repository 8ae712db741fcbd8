"""Client-side modality tokenizers: raw inputs -> cut-layer tokens [b, T, D], each led by a CLS token."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mpsl.config import ModelConfig
from mpsl.data.spec import ModalitySpec
from mpsl.models.encoder import EncoderBundle
from mpsl.registry import Registry


def _pre_norm(width: int, like: nn.LayerNorm | None) -> nn.LayerNorm:
    """A fresh LayerNorm, started from the checkpoint's input norm so tokens land in the scale it expects."""
    norm = nn.LayerNorm(width, eps=like.eps if like is not None else 1e-6)
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
        norm: nn.LayerNorm,
    ) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, width, kernel_size=patch, stride=stride, bias=False)
        grid_h = (input_hw[0] - patch[0]) // stride[0] + 1
        grid_w = (input_hw[1] - patch[1]) // stride[1] + 1
        if grid_h < 1 or grid_w < 1:
            raise ValueError(f"patch {patch} is larger than the input {input_hw}")
        self.num_tokens = 1 + grid_h * grid_w
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


class TextTokenizer(nn.Module):
    """WordPiece ids [b, L] (first id is [CLS]) -> [b, L, D] through the encoder's own word embeddings.

    Reusing the pretrained vocabulary means text needs no separate text encoder on the client.
    """

    def __init__(self, embeddings: nn.Embedding, max_len: int, norm: nn.LayerNorm) -> None:
        super().__init__()
        self.words = nn.Embedding.from_pretrained(embeddings.weight.detach().clone(), freeze=False)
        width = embeddings.embedding_dim
        self.num_tokens = max_len
        self.pos = nn.Parameter(torch.zeros(1, max_len, width))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.norm = norm

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        tokens = self.words(ids) + self.pos[:, : ids.shape[1]]  # [b, L, D]
        return self.norm(tokens)


class SentenceTokenizer(nn.Module):
    """The paper's text recipe: a frozen sentence encoder's vectors [b, S, E] (CLIP: E = 512, computed on the
    client, outside its trainable state) zero-padded to the width, one token per sentence: [b, S, D].

    Narrower encoders than E keep the first D components.
    """

    def __init__(self, num_sentences: int, width: int, norm: nn.LayerNorm) -> None:
        super().__init__()
        self.width = width
        self.num_tokens = num_sentences
        self.norm = norm

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        e = vectors.shape[-1]
        padded = nn.functional.pad(vectors, (0, self.width - e)) if e <= self.width else vectors[..., : self.width]
        return self.norm(padded)  # [b, S, E] -> [b, S, D]


TokenizerBuilder = Callable[[ModalitySpec, ModelConfig, EncoderBundle], nn.Module]
TOKENIZERS: Registry[TokenizerBuilder] = Registry("modality kind")


def _patch_builder(section: str) -> TokenizerBuilder:
    def build(spec: ModalitySpec, cfg: ModelConfig, bundle: EncoderBundle) -> nn.Module:
        tok = getattr(cfg, section)
        c, h, w = spec.shape
        return PatchTokenizer(c, (h, w), tok.patch, tok.stride or tok.patch, bundle.width,
                              _pre_norm(bundle.width, bundle.embed_norm))

    return build


TOKENIZERS.register("image")(_patch_builder("image"))
TOKENIZERS.register("audio")(_patch_builder("audio"))


@TOKENIZERS.register("text")
def _text(spec: ModalitySpec, cfg: ModelConfig, bundle: EncoderBundle) -> nn.Module:
    if bundle.word_embeddings is None:
        raise ValueError("text needs an encoder source with word embeddings")
    (max_len,) = spec.shape
    return TextTokenizer(bundle.word_embeddings, max_len, _pre_norm(bundle.width, bundle.embed_norm))


@TOKENIZERS.register("sentence")
def _sentence(spec: ModalitySpec, cfg: ModelConfig, bundle: EncoderBundle) -> nn.Module:
    num_sentences, _dim = spec.shape
    return SentenceTokenizer(num_sentences, bundle.width, _pre_norm(bundle.width, bundle.embed_norm))


def build_tokenizer(spec: ModalitySpec, cfg: ModelConfig, bundle: EncoderBundle) -> nn.Module:
    return TOKENIZERS.get(spec.kind)(spec, cfg, bundle)
