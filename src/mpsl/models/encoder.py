"""The server's shared encoder: the transformer blocks of a pretrained model, loaded from local files only."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mpsl.config import EncoderConfig
from mpsl.errors import ConfigError, ModelError
from mpsl.models.layouts import PatchEmbedding
from mpsl.packaged import local_model, minilm_dir
from mpsl.registry import Registry


class SharedEncoder(nn.Module):
    """A stack of transformer blocks over cut-layer tokens: [B, T, D] -> [B, T, D].

    It holds no embeddings: tokenization happens on the clients, so the server only sees the
    cut-layer tensors.
    """

    def __init__(self, blocks: nn.ModuleList, width: int, norm: nn.Module | None = None) -> None:
        super().__init__()
        self.blocks = blocks
        self.width = width
        self.norm = norm if norm is not None else nn.Identity()  # pre-norm (ViT) stacks end with one

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            out = block(x)
            x = out[0] if isinstance(out, tuple) else out  # older transformers return tuples
        return self.norm(x)

    def split(self, k: int) -> tuple[SharedEncoder, SharedEncoder]:
        """The first k blocks (a client's deeper cut, no final norm) and the rest with the norm: run one after
        the other they are this encoder, the same modules, not copies."""
        if not 0 <= k < self.depth:
            raise ConfigError(f"model.client_blocks: {k} is outside 0..{self.depth - 1} (the server keeps at least "
                              f"one of the encoder's {self.depth} blocks)")
        return SharedEncoder(self.blocks[:k], self.width), SharedEncoder(self.blocks[k:], self.width, self.norm)

    def train_last(self, k: int) -> None:
        """Freeze all blocks, then unfreeze the last k (the paper trains 6 of 12)."""
        if not 0 <= k <= self.depth:
            raise ConfigError(f"model.encoder.trainable_blocks: {k} is outside 0..{self.depth} (encoder depth)")
        for i, block in enumerate(self.blocks):
            block.requires_grad_(i >= self.depth - k)
        self.norm.requires_grad_(k > 0)  # the final norm trains with the last block


@dataclass
class EncoderBundle:
    """The encoder plus the pieces of the same checkpoint that client tokenizers reuse."""

    encoder: SharedEncoder
    word_embeddings: nn.Embedding | None  # text tokenizers start from the model's own vocabulary
    embed_norm: nn.LayerNorm | None  # the checkpoint's input LayerNorm, reused as tokenizer pre-norm
    vocab_dir: Path | None  # where the WordPiece vocabulary lives, if any
    patch_embed: PatchEmbedding | None = None  # image tokenizers start from it when it fits
    pre_norm: bool = True  # tokenizers end with a LayerNorm (BERT, CLIP); a plain ViT feeds tokens as they are

    @property
    def width(self) -> int:
        return self.encoder.width


ENCODERS: Registry[Callable[[EncoderConfig], EncoderBundle]] = Registry(
    "encoder source", config_keys=("model.encoder.source",))


def _bert_bundle(model: nn.Module, vocab_dir: Path | None) -> EncoderBundle:
    width = model.config.hidden_size
    return EncoderBundle(
        encoder=SharedEncoder(model.encoder.layer, width),
        word_embeddings=model.embeddings.word_embeddings,
        embed_norm=model.embeddings.LayerNorm,
        vocab_dir=vocab_dir,
    )


def load_bert_dir(path: Path, dropout: float) -> EncoderBundle:
    """A BERT-family model from a local Hugging Face directory; never touches a hub."""
    from transformers import BertConfig, BertModel
    from transformers.utils import logging as hf_logging

    if not (path / "config.json").is_file():
        raise ModelError(f"no config.json in {path}: expected a local Hugging Face model directory")
    weights = [p for p in ("model.safetensors", "pytorch_model.bin") if (path / p).is_file()]
    if not weights:
        raise ModelError(f"no model.safetensors or pytorch_model.bin in {path}")
    hf_logging.disable_progress_bar()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the unused pooler weights are expected, not news
    try:
        config = BertConfig.from_pretrained(path, local_files_only=True)
        config.hidden_dropout_prob = dropout
        config.attention_probs_dropout_prob = dropout
        model = BertModel.from_pretrained(path, config=config, local_files_only=True, add_pooling_layer=False)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"cannot load the model in {path}: {str(exc).splitlines()[0]}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    return _bert_bundle(model, path if (path / "vocab.txt").is_file() else None)


@ENCODERS.register("minilm")
def _minilm(cfg: EncoderConfig) -> EncoderBundle:
    return load_bert_dir(local_model(cfg.path, "model.encoder.path") if cfg.path else minilm_dir(), cfg.dropout)


@ENCODERS.register("hf-bert")
def _hf_bert(cfg: EncoderConfig) -> EncoderBundle:
    if not cfg.path:
        raise ConfigError("model.encoder.path: source hf-bert needs a local model directory or a model id in the "
                          "local Hugging Face cache")
    return load_bert_dir(local_model(cfg.path, "model.encoder.path"), cfg.dropout)


@ENCODERS.register("random")
def _random(cfg: EncoderConfig) -> EncoderBundle:
    """Random-init BERT-shaped blocks: for tests and cost studies, no files needed."""
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=30522,  # BERT's uncased WordPiece: the default text tokenizer's ids fit
        hidden_size=cfg.width,
        num_hidden_layers=cfg.depth,
        num_attention_heads=cfg.heads,
        intermediate_size=int(cfg.width * cfg.mlp_ratio),
        hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.dropout,
        max_position_embeddings=512,
    )
    return _bert_bundle(BertModel(config, add_pooling_layer=False), None)
