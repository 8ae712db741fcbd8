"""Sentences -> token ids for the client's text tokenizer, with a local Hugging Face tokenizer only.

    text       WordPiece ids of the encoder's own vocabulary (default: the packaged all-MiniLM-L6-v2),
               [L] per sentence, led by [CLS]; read by the `text` tokenizer's word embeddings
    clip-text  CLIP BPE ids, [L] per sentence, read by the client's frozen CLIP text tower
    sentence   a frozen sentence encoder's vectors (default: all-MiniLM-L6-v2, mean-pooled and
               L2-normalized as sentence-transformers reads it), computed once while decoding: the
               paper's frozen-text-tower recipe without a CLIP checkpoint; one token per sentence
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import get_args

import numpy as np

from mpsl.config import DataConfig, TextKind
from mpsl.errors import ConfigError, DataError
from mpsl.packaged import local_model, minilm_dir

TEXT_KINDS: tuple[str, ...] = get_args(TextKind)
MIN_VOCAB = 1000  # offline, a hub id can yield a near-empty tokenizer without raising: refuse those


def text_kind(cfg: DataConfig, sentences: int) -> str:
    """data.text, or by default: WordPiece ids for one sentence, sentence vectors for several."""
    kind = cfg.text or ("text" if sentences == 1 else "sentence")
    if kind not in TEXT_KINDS:
        raise ConfigError(f"data.text: {kind!r} is not one of {', '.join(TEXT_KINDS)}")
    if kind == "text" and sentences != 1:
        raise ConfigError(f"data.text=text reads one sentence per sample, this dataset has {sentences}: "
                          "use sentence or clip-text (one token per sentence)")
    return kind


def _default_dir(kind: str) -> Path:
    if kind == "clip-text":
        raise ConfigError("data.text_tokenizer: clip-text needs the path of a local CLIP directory "
                          "(the same as model.text_encoder)")
    return minilm_dir()


@lru_cache(maxsize=4)
def _load(path: str):
    from transformers import AutoTokenizer

    if not Path(path).is_dir():
        raise DataError(f"data.text_tokenizer: {path} is not a folder with a Hugging Face tokenizer")
    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise DataError(f"data.text_tokenizer: cannot load a tokenizer from {path}: "
                        f"{str(exc).splitlines()[0]}") from None
    if len(tok) < MIN_VOCAB:
        raise DataError(f"data.text_tokenizer: the tokenizer in {path} has only {len(tok)} tokens")
    return tok


def tokenizer_path(cfg: DataConfig, kind: str = "text") -> str:
    return str(local_model(cfg.text_tokenizer, "data.text_tokenizer") if cfg.text_tokenizer else _default_dir(kind))


def encode_sentences(sentences: Sequence[str], cfg: DataConfig, kind: str = "text") -> np.ndarray:
    """Sentences -> int64 [n, text_length] ids, truncated and padded (pad id)."""
    tok = _load(tokenizer_path(cfg, kind))
    ids = tok(list(sentences), padding="max_length", truncation=True, max_length=cfg.text_length)["input_ids"]
    return np.asarray(ids, dtype=np.int64)  # [n, L]


@lru_cache(maxsize=2)
def _sentence_model(path: str):
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the dataset's own progress bar is the one to watch
    try:
        return AutoModel.from_pretrained(path, local_files_only=True).eval()
    except (OSError, ValueError) as exc:
        raise DataError(f"data.text_tokenizer: cannot load a sentence encoder from {path}: "
                        f"{str(exc).splitlines()[0]}") from None
    finally:
        hf_logging.enable_progress_bar()


def sentence_vectors(sentences: Sequence[str], cfg: DataConfig) -> np.ndarray:
    """Sentences -> float32 [n, E] unit vectors: the frozen encoder's token outputs averaged over the words."""
    import torch

    path = tokenizer_path(cfg, "sentence")
    tok, model = _load(path), _sentence_model(path)
    batch = tok(list(sentences), padding=True, truncation=True, max_length=cfg.text_length, return_tensors="pt")
    with torch.no_grad():
        out = model(**batch).last_hidden_state  # [n, L, E]
    mask = batch["attention_mask"].unsqueeze(-1).float()  # [n, L, 1]
    mean = (out * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)  # [n, E]
    return torch.nn.functional.normalize(mean, dim=-1).numpy().astype(np.float32)


def sentence_width(cfg: DataConfig) -> int:
    """E of the sentence encoder, read from its config (no weights loaded)."""
    from transformers import AutoConfig

    path = tokenizer_path(cfg, "sentence")
    try:
        return int(AutoConfig.from_pretrained(path, local_files_only=True).hidden_size)
    except (OSError, ValueError, AttributeError) as exc:
        raise DataError(f"data.text_tokenizer: no model config in {path} ({str(exc).splitlines()[0]})") from None
