"""Kinetics-Sounds: Kinetics-400 videos of its sound classes -> 30 classes, from the middle frame + 10.24 s of audio.

Layout (data.root): the Kinetics-400 clips of the Kinetics-Sounds classes, one folder per class, as the
Kinetics download tools arrange them:

    train/<class name>/<youtube id>_<start>_<end>.mp4      e.g. train/playing drums/-0B3kuDp1nY_000011_000021.mp4
    val/<class name>/...                                   the test split (Kinetics' val); test/ is read when
                                                           there is no val/

The classes are the sorted folder names under train/ (the 30 of Kinetics-Sounds, as arranged by the
user); a val class that train/ lacks is an error. Videos without an audio track are left out.
"""

from __future__ import annotations

from pathlib import Path

from mpsl.config import DataConfig
from mpsl.data.catalog import Example, FileDataset, Layout
from mpsl.data.datasets import clips
from mpsl.data.media import has_audio
from mpsl.data.sources import register_files
from mpsl.errors import DataError

AUDIO_FRAMES = 1024  # 10.24 s: the whole 10 s clip, as AST reads Kinetics-Sounds / AudioSet
TEST_FOLDERS = ("val", "test")


def _class_folders(split: Path) -> dict[str, Path]:
    if not split.is_dir():
        raise DataError(f"{split}: folder not found (expected one folder per class in it)")
    return {p.name: p for p in sorted(split.iterdir()) if p.is_dir() and not p.name.startswith(".")}


def _examples(split: Path, classes: list[str]) -> list[Example]:
    examples = []
    for name, folder in _class_folders(split).items():
        if name not in classes:
            raise DataError(f"{folder}: class {name!r} is not a class folder of the train split")
        for video in sorted(p for p in folder.iterdir() if clips.is_video(p)):
            if has_audio(video):
                examples.append(Example({"video": video}, classes.index(name)))
    return examples


def read(root: Path, cfg: DataConfig) -> Layout:
    classes = list(_class_folders(root / "train"))
    test = next((root / t for t in TEST_FOLDERS if (root / t).is_dir()), root / TEST_FOLDERS[0])
    return Layout(classes, _examples(root / "train", classes), _examples(test, classes))


DATASET = register_files(FileDataset(
    "kinetics-sounds", "Kinetics-Sounds: middle frame + 10.24 s audio -> 30 classes, videos with sound only "
    "(data.root: train/<class>/*.mp4, val/<class>/*.mp4)", "classification", clips.modalities(AUDIO_FRAMES), read,
    clips.decoder(AUDIO_FRAMES), fusion="late",
))
