"""UCF101: action videos -> the 51 classes whose videos have sound, from the middle frame + 1 s of audio.

Official layout (data.root, UCF101.rar and UCF101TrainTestSplits-RecognitionTask.zip unpacked):

    UCF-101/<Class>/v_<Class>_g<group>_c<clip>.avi
    ucfTrainTestlist/classInd.txt     "1 ApplyEyeMakeup": the 101 classes, numbered from 1
    ucfTrainTestlist/trainlist01.txt  "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1"
    ucfTrainTestlist/testlist01.txt   "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi"

Split 01 is used. Only videos with an audio track are samples, and only classes with such a video are
classes (51 of the 101), numbered 0..C-1 in classInd order. A video's class is its folder in the list.
"""

from __future__ import annotations

from pathlib import Path

from mpsl.config import DataConfig
from mpsl.data.catalog import Example, FileDataset, Layout
from mpsl.data.datasets import clips
from mpsl.data.datasets.common import read_lines
from mpsl.data.media import has_audio
from mpsl.data.sources import register_files
from mpsl.errors import DataError

SPLIT = "01"
AUDIO_FRAMES = 100  # 1 s


def _class_index(path: Path) -> list[str]:
    """classInd.txt -> class names, in its order (numbered 1, 2, ... there)."""
    names = []
    for n, line in enumerate(read_lines(path), start=1):
        parts = line.split()
        if len(parts) != 2 or parts[0] != str(len(names) + 1):
            raise DataError(f"{path}:{n}: expected '{len(names) + 1} <ClassName>', got {line!r}")
        names.append(parts[1])
    return names


def _videos(root: Path, lists: Path, name: str, classes: list[str]) -> list[tuple[Path, str]]:
    """A split list -> (video path, class name); trainlists also give the class number, which must agree."""
    path = lists / f"{name}list{SPLIT}.txt"
    videos = []
    for n, line in enumerate(read_lines(path), start=1):
        parts = line.split()
        folder = parts[0].split("/")[0] if parts else ""
        if len(parts) not in (1, 2) or "/" not in parts[0] or folder not in classes:
            raise DataError(f"{path}:{n}: expected '<Class>/<video>.avi[ <number>]' with a class of "
                            f"classInd.txt, got {line!r}")
        if len(parts) == 2 and parts[1] != str(classes.index(folder) + 1):
            raise DataError(f"{path}:{n}: {parts[0]} is numbered {parts[1]}, classInd.txt says "
                            f"{classes.index(folder) + 1}")
        videos.append((root / "UCF-101" / parts[0], folder))
    return videos


def read(root: Path, cfg: DataConfig) -> Layout:
    lists = root / "ucfTrainTestlist"
    names = _class_index(lists / "classInd.txt")
    splits = {s: [(v, c) for v, c in _videos(root, lists, s, names) if has_audio(v)] for s in ("train", "test")}
    sounding = {c for videos in splits.values() for _, c in videos}
    classes = [c for c in names if c in sounding]
    index = {c: i for i, c in enumerate(classes)}
    examples = {s: [Example({"video": v}, index[c]) for v, c in videos] for s, videos in splits.items()}
    return Layout(classes, examples["train"], examples["test"])


DATASET = register_files(FileDataset(
    "ucf101", "UCF101 split 1: middle frame + 1 s audio -> 51 action classes, videos with sound only "
    "(data.root: UCF-101/, ucfTrainTestlist/)", "classification", clips.modalities(AUDIO_FRAMES), read,
    clips.decoder(AUDIO_FRAMES), fusion="late",
))
