"""B-T4SA: tweet images + tweet texts -> 3 sentiments (0 negative, 1 neutral, 2 positive).

Official layout (data.root):

    b-t4sa_train.txt       one sample per line: <image path relative to root> <label>
    b-t4sa_test.txt        (b-t4sa_val.txt is not used: the paper trains on train, tests on test)
    raw_tweets_text.csv    columns id,text; the tweet id is the image file name before its first '-'
    data/...               the images the lists point to
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mpsl.config import DataConfig
from mpsl.data.catalog import Example, FileDataset, Layout
from mpsl.data.datasets.common import decode_image, encode_text, image_spec, read_csv, read_lines, text_spec
from mpsl.data.sources import register_files
from mpsl.data.spec import ModalitySpec
from mpsl.errors import DataError

CLASSES = ["negative", "neutral", "positive"]


def _split(root: Path, name: str, texts: dict[str, str]) -> list[Example]:
    path = root / f"b-t4sa_{name}.txt"
    examples = []
    for n, line in enumerate(read_lines(path), start=1):
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            raise DataError(f"{path}:{n}: expected '<image path> <0|1|2>', got {line!r}")
        image = root / parts[0]
        tweet = image.name.split("-", 1)[0]
        if tweet not in texts:
            raise DataError(f"{path}:{n}: tweet {tweet} has no text in raw_tweets_text.csv")
        examples.append(Example({"image": image, "text": texts[tweet]}, int(parts[1])))
    return examples


def read(root: Path, cfg: DataConfig) -> Layout:
    texts = {row["id"]: row["text"] for row in read_csv(root / "raw_tweets_text.csv", ("id", "text"))}
    return Layout(CLASSES, _split(root, "train", texts), _split(root, "test", texts))


def modalities(cfg: DataConfig) -> dict[str, ModalitySpec]:
    return {"image": image_spec(cfg), "text": text_spec(cfg)}


def decode(ex: Example, cfg: DataConfig) -> dict[str, np.ndarray]:
    return {"image": decode_image(ex.sources["image"], cfg), "text": encode_text([ex.sources["text"]], cfg)}


DATASET = register_files(FileDataset(
    "t4sa", "B-T4SA tweets: image + text -> 3 sentiments (data.root: b-t4sa_{train,test}.txt, "
    "raw_tweets_text.csv, images)", "classification", modalities, read, decode,
))
