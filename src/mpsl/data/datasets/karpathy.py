"""Karpathy's caption splits (dataset_flickr30k.json, dataset_coco.json), shared by the retrieval datasets.

This module registers nothing: flickr30k and mscoco_retrieval read their JSON through it. The format:

    {"dataset": "flickr30k" | "coco",
     "images": [{"filename": "1000092795.jpg", "split": "train" | "restval" | "val" | "test",
                 "filepath": "val2014",                   (COCO only: the image's folder)
                 "sentences": [{"raw": "Two young guys ...", "tokens": [...], "imgid": 0, "sentid": 0}, ...],
                 "imgid": 0, "sentids": [0, 1, 2, 3, 4]}, ...]}

A sample is one image and its first CAPTIONS captions (a few COCO images have six or seven).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mpsl.config import DataConfig
from mpsl.data.catalog import Example
from mpsl.data.datasets.common import decode_image, encode_text, image_spec, read_json, text_spec
from mpsl.data.spec import ModalitySpec
from mpsl.errors import DataError

CAPTIONS = 5  # captions per image, as the paper's retrieval benchmarks use them


def _captions(path: Path, entry: dict[str, Any], name: str) -> list[str]:
    sentences = entry.get("sentences")
    if not isinstance(sentences, list) or not all(isinstance(s, dict) and isinstance(s.get("raw"), str)
                                                  for s in sentences):
        raise DataError(f"{path}: image {name} has no list of sentences with a 'raw' caption")
    if len(sentences) < CAPTIONS:
        raise DataError(f"{path}: image {name} has {len(sentences)} captions, expected at least {CAPTIONS}")
    return [s["raw"].strip() for s in sentences[:CAPTIONS]]


def read_splits(path: Path, image_path: Callable[[dict[str, Any]], Path]) -> dict[str, list[Example]]:
    """Split name -> its samples in file order; image_path(entry) is where an entry's image lies."""
    data = read_json(path)
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise DataError(f"{path}: expected an object with a list 'images' (Karpathy's split format)")
    splits: dict[str, list[Example]] = {}
    for n, entry in enumerate(images):
        if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str) or "split" not in entry:
            raise DataError(f"{path}: images[{n}] has no 'filename' or 'split'")
        try:
            image = image_path(entry)
        except (KeyError, TypeError):
            raise DataError(f"{path}: images[{n}] ({entry['filename']}) does not say where its image lies") from None
        captions = _captions(path, entry, entry["filename"])
        splits.setdefault(str(entry["split"]), []).append(Example({"image": image, "captions": captions}, 0))
    return splits


def modalities(cfg: DataConfig) -> dict[str, ModalitySpec]:
    return {"image": image_spec(cfg), "captions": text_spec(cfg, CAPTIONS)}


def decode(ex: Example, cfg: DataConfig) -> dict[str, np.ndarray]:
    # image uint8 [3, S, S]; captions [5, E] sentence vectors (or [5, L] CLIP ids)
    return {"image": decode_image(ex.sources["image"], cfg), "captions": encode_text(ex.sources["captions"], cfg)}
