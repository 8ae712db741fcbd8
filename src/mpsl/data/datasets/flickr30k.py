"""Flickr30k: image <-> caption retrieval, each image with its first five captions, Karpathy's split.

Official layout (data.root):

    dataset_flickr30k.json     Karpathy's split (from caption_datasets.zip): every image's file name,
                               split (train 29,000 / val 1,014 / test 1,000) and captions
    flickr30k-images/          the images, e.g. 1000092795.jpg

Train on the train split, test on the test split (val is not used). No classes: every image and its
captions are one pair.
"""

from __future__ import annotations

from pathlib import Path

from mpsl.config import DataConfig
from mpsl.data.catalog import FileDataset, Layout
from mpsl.data.datasets import karpathy
from mpsl.data.sources import register_files

SPLIT_FILE = "dataset_flickr30k.json"
IMAGES = "flickr30k-images"


def read(root: Path, cfg: DataConfig) -> Layout:
    splits = karpathy.read_splits(root / SPLIT_FILE, lambda entry: root / IMAGES / entry["filename"])
    return Layout([], splits.get("train", []), splits.get("test", []))


DATASET = register_files(FileDataset(
    "flickr30k", "Flickr30k: image <-> 5 captions retrieval, Karpathy split (data.root: dataset_flickr30k.json, "
    "flickr30k-images/)", "retrieval", karpathy.modalities, read, karpathy.decode, fusion="dual",
))
