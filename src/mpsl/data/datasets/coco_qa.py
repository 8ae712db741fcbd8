"""COCO-QA: an MS-COCO image + a question about it -> its one-word answer (430 answers in the release).

Official layout (data.root): cocoqa-2015-05-17.zip unpacked, here or under cocoqa/, next to the
MS-COCO 2014 image folders.

    train/img_ids.txt      one line per question: the COCO image id, e.g. 505090
    train/questions.txt    the question, e.g. "what is the man riding down the street ?"
    train/answers.txt      its one-word answer, e.g. "skateboard"
    train/types.txt        its type: 0 object, 1 number, 2 color, 3 location (read only to check the count)
    test/...               the same four files
    train2014/COCO_train2014_000000505090.jpg    COCO-QA train asks about train2014 images, its test
    val2014/COCO_val2014_000000000042.jpg        about val2014 ones; an id is looked up in both folders

The four files of a split are parallel: line n of each is the same question. Classes are the sorted
union of the train and test answers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mpsl.config import DataConfig
from mpsl.data.catalog import Example, FileDataset, Layout
from mpsl.data.datasets.common import decode_image, encode_text, image_spec, read_lines, text_spec
from mpsl.data.sources import register_files
from mpsl.data.spec import ModalitySpec
from mpsl.errors import DataError

FILES = ("img_ids", "questions", "answers", "types")  # parallel, one question per line
QA_FOLDERS = (".", "cocoqa", "cocoqa-2015-05-17")  # where the train/ and test/ folders may sit under data.root
IMAGE_FOLDERS = {"train": ("train2014", "val2014"), "test": ("val2014", "train2014")}  # usual one first

Question = tuple[Path, int, int, str, str]  # img_ids.txt, its line, image id, question, answer


def _qa_root(root: Path) -> Path:
    for sub in QA_FOLDERS:
        if (root / sub / "train" / "img_ids.txt").is_file():
            return root / sub
    return root  # reading then names the missing root/train/img_ids.txt


def _questions(qa: Path, split: str) -> list[Question]:
    paths = {f: qa / split / f"{f}.txt" for f in FILES}
    columns = {f: read_lines(p) for f, p in paths.items()}
    ids = paths["img_ids"]
    n = len(columns["img_ids"])
    for f, lines in columns.items():
        if len(lines) != n:
            raise DataError(f"{paths[f]}: {len(lines)} lines, but {ids} has {n} (the four files are parallel)")
    questions = []
    rows = zip(columns["img_ids"], columns["questions"], columns["answers"], strict=True)
    for line, (image, question, answer) in enumerate(rows, start=1):
        if not image.strip().isdigit():
            raise DataError(f"{ids}:{line}: expected a COCO image id, got {image!r}")
        questions.append((ids, line, int(image), question.strip(), answer.strip()))
    return questions


def _image(root: Path, split: str, question: Question) -> Path:
    ids, line, image_id = question[:3]
    candidates = [root / folder / f"COCO_{folder}_{image_id:012d}.jpg" for folder in IMAGE_FOLDERS[split]]
    for path in candidates:
        if path.is_file():
            return path
    raise DataError(f"{ids}:{line}: image {image_id} not found: neither {candidates[0]} nor {candidates[1]} exists")


def read(root: Path, cfg: DataConfig) -> Layout:
    qa = _qa_root(root)
    splits = {s: _questions(qa, s) for s in ("train", "test")}
    classes = sorted({q[4] for questions in splits.values() for q in questions})
    index = {answer: i for i, answer in enumerate(classes)}
    examples = {s: [Example({"image": _image(root, s, q), "question": q[3]}, index[q[4]]) for q in questions]
                for s, questions in splits.items()}
    return Layout(classes, examples["train"], examples["test"])


def modalities(cfg: DataConfig) -> dict[str, ModalitySpec]:
    return {"image": image_spec(cfg), "question": text_spec(cfg)}  # uint8 [3, S, S], ids [L]


def decode(ex: Example, cfg: DataConfig) -> dict[str, np.ndarray]:
    return {"image": decode_image(ex.sources["image"], cfg), "question": encode_text([ex.sources["question"]], cfg)}


DATASET = register_files(FileDataset(
    "coco-qa", "COCO-QA: image + question -> one-word answer, 430 classes (data.root: train/ and test/ of "
    "cocoqa-2015-05-17.zip, here or under cocoqa/, and the COCO train2014/, val2014/ images)",
    "classification", modalities, read, decode, fusion="early",
))
