"""MELD: an utterance of a Friends dialogue, its audio track + its transcript -> 7 emotions.

Official layout (data.root):

    train_sent_emo.csv    Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,
    dev_sent_emo.csv      StartTime,EndTime: one utterance a row, the emotion in lower case
    test_sent_emo.csv
    train_splits/dia{Dialogue_ID}_utt{Utterance_ID}.mp4    the utterance's clip, e.g. dia0_utt0.mp4
    dev_splits_complete/dia{Dialogue_ID}_utt{Utterance_ID}.mp4
    output_repeated_splits_test/dia{Dialogue_ID}_utt{Utterance_ID}.mp4

MELD.Raw's arrangement is accepted too: the clip folders one level down, in train/, dev/ and test/
(train/train_splits/..., or the clips directly in train/), a split's CSV there or in data.root.

Train is train + dev (as the paper), test is test. A few rows of the release have no clip: such a row is
skipped; a clip that exists but cannot be decoded is an error. The CSVs are read as UTF-8, or as cp1252
when they are not UTF-8.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from mpsl.config import DataConfig
from mpsl.data.catalog import Example, FileDataset, Layout
from mpsl.data.datasets.common import encode_text, need_file, text_spec
from mpsl.data.media import fbank_input, load_audio
from mpsl.data.sources import register_files
from mpsl.data.spec import ModalitySpec
from mpsl.errors import DataError

CLASSES = ["neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"]  # MELD's order
COLUMNS = ("Utterance", "Emotion", "Dialogue_ID", "Utterance_ID")  # of the header's eleven, those read here
CLIPS = {"train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test"}
DEFAULT_FRAMES = 768  # fbank frames (10 ms): 7.68 s, longer than most utterances


def _csv_path(root: Path, split: str) -> Path:
    nested = root / split / f"{split}_sent_emo.csv"
    return nested if nested.is_file() else root / f"{split}_sent_emo.csv"


def _clip_dir(root: Path, split: str) -> Path:
    candidates = [root / CLIPS[split], root / split / CLIPS[split], root / split]
    for folder in candidates:
        if folder.is_dir():
            return folder
    raise DataError(f"meld: no folder of {split} clips: expected {candidates[0]} or {candidates[1]}")


def _csv_text(path: Path) -> str:
    data = need_file(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: neither UTF-8 nor cp1252 text ({exc})") from None


def _rows(path: Path) -> list[tuple[int, dict[str, str]]]:
    """(line, row) for each data row of a MELD CSV; line is where the row ends in the file."""
    reader = csv.DictReader(io.StringIO(_csv_text(path), newline=""))
    try:
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: no column {missing} in the header {reader.fieldnames}")
        return [(reader.line_num, row) for row in reader]
    except csv.Error as exc:
        raise DataError(f"{path}:{reader.line_num}: not a readable CSV row ({exc})") from None


def _split(root: Path, split: str) -> list[Example]:
    path, clips = _csv_path(root, split), _clip_dir(root, split)
    examples = []
    for line, row in _rows(path):
        emotion = (row["Emotion"] or "").strip().lower()
        if emotion not in CLASSES:
            raise DataError(f"{path}:{line}: unknown emotion {row['Emotion']!r} (Sr No. {row.get('Sr No.')}), "
                            f"expected one of {', '.join(CLASSES)}")
        dialogue, utterance = (row["Dialogue_ID"] or "").strip(), (row["Utterance_ID"] or "").strip()
        if not (dialogue.isdigit() and utterance.isdigit()):
            raise DataError(f"{path}:{line}: Dialogue_ID {dialogue!r} and Utterance_ID {utterance!r} must be "
                            "whole numbers")
        clip = clips / f"dia{int(dialogue)}_utt{int(utterance)}.mp4"
        if clip.exists():  # a few rows of the release have no clip
            examples.append(Example({"audio": clip, "text": row["Utterance"] or ""}, CLASSES.index(emotion)))
    return examples


def read(root: Path, cfg: DataConfig) -> Layout:
    return Layout(CLASSES, _split(root, "train") + _split(root, "dev"), _split(root, "test"))


def _frames(cfg: DataConfig) -> int:
    return cfg.audio_frames or DEFAULT_FRAMES


def modalities(cfg: DataConfig) -> dict[str, ModalitySpec]:
    return {"audio": ModalitySpec("audio", (1, 128, _frames(cfg))), "text": text_spec(cfg)}  # fbank, ids [L]


def decode(ex: Example, cfg: DataConfig) -> dict[str, np.ndarray]:
    wave = load_audio(ex.sources["audio"])  # the clip's audio track, mono float32 [n] at 16 kHz
    return {"audio": fbank_input(wave, _frames(cfg)), "text": encode_text([ex.sources["text"]], cfg)}


DATASET = register_files(FileDataset(
    "meld", "MELD: utterance audio + transcript -> 7 emotions (data.root: {train,dev,test}_sent_emo.csv, "
    "train_splits/, dev_splits_complete/, output_repeated_splits_test/ clips; train = train + dev)",
    "classification", modalities, read, decode, fusion="early",
))
