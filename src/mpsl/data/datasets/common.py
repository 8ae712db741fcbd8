"""Pieces several file datasets share: reading their text files with errors that name the file."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from mpsl.config import DataConfig
from mpsl.data.media import load_image
from mpsl.data.spec import ModalitySpec
from mpsl.data.text import encode_sentences, sentence_vectors, sentence_width, text_kind
from mpsl.errors import DataError


def need_file(path: Path) -> Path:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    return path


def read_lines(path: Path) -> list[str]:
    """Non-empty lines of a text file, without line ends."""
    try:
        text = need_file(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc})") from None
    return [line.rstrip("\r") for line in text.split("\n") if line.strip()]


def read_csv(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    """Rows of a CSV file with a header that has at least `columns`."""
    try:
        with need_file(path).open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            missing = [c for c in columns if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{path}: no column {missing} in the header {reader.fieldnames}")
            return list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: not a readable CSV file ({exc})") from None


def read_json(path: Path) -> Any:
    try:
        return json.loads(need_file(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None


def image_spec(cfg: DataConfig) -> ModalitySpec:
    return ModalitySpec("image", (3, cfg.image_size, cfg.image_size))


def text_spec(cfg: DataConfig, sentences: int = 1) -> ModalitySpec:
    """What a sample's `sentences` sentences become (mpsl.data.text): [L] ids (text), [S, L] ids
    (clip-text), or [S, E] vectors (sentence)."""
    kind = text_kind(cfg, sentences)
    if kind == "text":
        return ModalitySpec("text", (cfg.text_length,))
    if kind == "clip-text":
        return ModalitySpec("clip-text", (sentences, cfg.text_length))
    return ModalitySpec("sentence", (sentences, sentence_width(cfg)))


def encode_text(sentences: list[str], cfg: DataConfig) -> np.ndarray:
    """One sample's sentences -> the array text_spec describes."""
    kind = text_kind(cfg, len(sentences))
    if kind == "sentence":
        return sentence_vectors(sentences, cfg)  # [S, E]
    ids = encode_sentences(sentences, cfg, kind)  # [S, L]
    return ids[0] if kind == "text" else ids


def decode_image(path: Path, cfg: DataConfig) -> np.ndarray:
    return load_image(path, cfg.image_size)  # uint8 [3, S, S]
