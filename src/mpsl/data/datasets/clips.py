"""A video as one frame + one audio clip, shared by the audio-visual datasets (ucf101, kinetics_sounds).

This module registers nothing. A sample is the video's middle frame and `frames` 10 ms fbank frames of
the audio centred on it:

    frame  uint8 [3, S, S]           S = data.image_size
    audio  float32 [1, 128, F]       F = data.audio_frames, or the dataset's default
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from mpsl.config import DataConfig
from mpsl.data.catalog import Example
from mpsl.data.datasets.common import image_spec
from mpsl.data.media import fbank_input, video_frame_and_audio
from mpsl.data.spec import ModalitySpec

MELS = 128
FRAMES_PER_SECOND = 100  # fbank frames are 10 ms apart
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm")


def is_video(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES and not path.name.startswith(".")


def frames(cfg: DataConfig, default: int) -> int:
    return cfg.audio_frames or default


def modalities(default_frames: int) -> Callable[[DataConfig], dict[str, ModalitySpec]]:
    def specs(cfg: DataConfig) -> dict[str, ModalitySpec]:
        return {"frame": image_spec(cfg), "audio": ModalitySpec("audio", (1, MELS, frames(cfg, default_frames)))}

    return specs


def decoder(default_frames: int) -> Callable[[Example, DataConfig], dict[str, np.ndarray]]:
    def decode(ex: Example, cfg: DataConfig) -> dict[str, np.ndarray]:
        n = frames(cfg, default_frames)
        frame, wave = video_frame_and_audio(ex.sources["video"], cfg.image_size, n / FRAMES_PER_SECOND)
        return {"frame": frame, "audio": fbank_input(wave, n)}  # [3, S, S], [1, 128, n]

    return decode
