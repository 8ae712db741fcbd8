"""MS-COCO 2014 retrieval: image <-> caption retrieval with the first five captions, Karpathy's 5k test split.

Official layout (data.root):

    dataset_coco.json          Karpathy's split (from caption_datasets.zip): every image's folder
                               ("filepath"), file name, split (train 82,783 / restval 30,504 / val 5,000 /
                               test 5,000) and captions
    train2014/                 COCO_train2014_000000000009.jpg, ...
    val2014/                   COCO_val2014_000000000042.jpg, ... (restval, val and test come from here)

Train on train + restval (113,287 images), test on the 5,000 test images (val is not used).
"""

from __future__ import annotations

from pathlib import Path

from mpsl.config import DataConfig
from mpsl.data.catalog import FileDataset, Layout
from mpsl.data.datasets import karpathy
from mpsl.data.sources import register_files

SPLIT_FILE = "dataset_coco.json"


def read(root: Path, cfg: DataConfig) -> Layout:
    splits = karpathy.read_splits(root / SPLIT_FILE, lambda entry: root / entry["filepath"] / entry["filename"])
    return Layout([], splits.get("train", []) + splits.get("restval", []), splits.get("test", []))


DATASET = register_files(FileDataset(
    "mscoco-retrieval", "MS-COCO 2014: image <-> 5 captions retrieval, Karpathy split (data.root: dataset_coco.json, "
    "train2014/, val2014/)", "retrieval", karpathy.modalities, read, karpathy.decode, fusion="dual",
))
