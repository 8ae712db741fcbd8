"""Decoding the files of real datasets: images with Pillow, audio with soundfile or PyAV, video with PyAV.

Every failure is a DataError that names the file, so one corrupted JPEG among 100,000 is found at once.

    image  -> uint8 [3, S, S]     shorter side resized to S (bicubic), centre crop (CLIP's eval transform)
    audio  -> float32 [n]         mono, resampled to 16 kHz
    video  -> uint8 [3, S, S] frame at a time t, and float32 [n] audio of a clip centred on t
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mpsl.data.fbank import fbank_clip
from mpsl.errors import DataError

SAMPLE_RATE = 16000
# CLIP's image normalization (the paper's ViT-B/16 is LAION-2B CLIP): applied when a batch is read
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
# AST's fbank normalization, (x - mean) / (2 std), so clips land near [-1, 1]
FBANK_MEAN, FBANK_STD = -4.2677393, 4.5689974


def square_image(image, size: int) -> np.ndarray:
    """A Pillow image -> uint8 [3, size, size]: shorter side resized to `size` (bicubic), centre crop."""
    from PIL import Image

    image = image.convert("RGB")
    w, h = image.size
    scale = size / min(w, h)
    image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BICUBIC)
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    image = image.crop((left, top, left + size, top + size))
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy()  # [S, S, 3] -> [3, S, S]


def load_image(path: Path, size: int) -> np.ndarray:
    """An image file -> uint8 [3, size, size]."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return square_image(image, size)
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from None


def normalize_image(images: torch.Tensor) -> torch.Tensor:
    """uint8 [b, 3, S, S] -> float32 [b, 3, S, S], CLIP-normalized."""
    mean = torch.tensor(IMAGE_MEAN).reshape(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD).reshape(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def _to_mono_16k(frames: list[np.ndarray], rate: int) -> np.ndarray:
    """Decoded planar chunks [channels, n] at `rate` -> mono float32 [n'] at 16 kHz (linear interpolation)."""
    if not frames:
        return np.zeros(0, dtype=np.float32)
    wave = np.concatenate(frames, axis=1).astype(np.float32).mean(axis=0)  # [C, n] -> [n]
    if rate != SAMPLE_RATE and len(wave) > 1:
        n_out = max(1, round(len(wave) * SAMPLE_RATE / rate))
        wave = np.interp(np.arange(n_out) * rate / SAMPLE_RATE, np.arange(len(wave)), wave).astype(np.float32)
    return wave


def load_audio(path: Path) -> np.ndarray:
    """An audio file (WAV/FLAC/OGG via soundfile, anything else via PyAV) -> mono float32 [n] at 16 kHz."""
    import soundfile as sf

    if not path.is_file():
        raise DataError(f"{path}: audio file not found")
    try:
        wave, rate = sf.read(str(path), dtype="float32", always_2d=True)  # [n, C]
        return _to_mono_16k([wave.T], rate)
    except (sf.LibsndfileError, RuntimeError):
        pass  # not a soundfile format (e.g. mp4, mp3): PyAV below
    return _decode_av(path, None, None)[1]


def _decode_av(path: Path, frame_at: float | None, audio_window: tuple[float, float] | None,
               size: int = 224) -> tuple[np.ndarray | None, np.ndarray]:
    """One pass over a media file: the video frame nearest `frame_at` seconds (if asked) and the audio
    within `audio_window` (start, end) seconds (None: all of it), mono 16 kHz."""
    import av

    try:
        container = av.open(str(path))
    except FileNotFoundError:
        raise DataError(f"{path}: media file not found") from None
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable media file ({exc})") from None
    with container:
        try:
            frame = None
            if frame_at is not None:
                if not container.streams.video:
                    raise DataError(f"{path}: has no video stream")
                frame = _frame_near(container, frame_at, size)
                container.seek(0)
            chunks, rate = [], SAMPLE_RATE
            if container.streams.audio:
                stream = container.streams.audio[0]
                for f in container.decode(stream):
                    rate = f.sample_rate
                    t = float(f.pts * f.time_base) if f.pts is not None else 0.0
                    data = f.to_ndarray()  # planar [C, n] or packed [1, n*C]
                    if not f.format.is_planar:
                        data = data.reshape(-1, len(f.layout.channels)).T
                    if audio_window is not None:
                        start = max(0, round((audio_window[0] - t) * rate))
                        end = min(data.shape[1], round((audio_window[1] - t) * rate))
                        if end <= 0 or start >= data.shape[1]:
                            if t > audio_window[1]:
                                break
                            continue
                        data = data[:, start:end]
                    chunks.append(_as_float(data))
            elif audio_window is not None or frame_at is None:
                raise DataError(f"{path}: has no audio stream")
        except (av.error.FFmpegError, ValueError) as exc:
            raise DataError(f"{path}: cannot be decoded ({exc})") from None
    return frame, _to_mono_16k(chunks, rate)


def _as_float(data: np.ndarray) -> np.ndarray:
    if np.issubdtype(data.dtype, np.integer):
        return data.astype(np.float32) / float(np.iinfo(data.dtype).max)
    return data.astype(np.float32)


def _frame_near(container, at: float, size: int) -> np.ndarray:
    stream = container.streams.video[0]
    best = None
    for f in container.decode(stream):
        t = float(f.pts * f.time_base) if f.pts is not None else 0.0
        best = f
        if t >= at:
            break
    if best is None:
        raise DataError(f"{container.name}: the video stream has no frames")
    return square_image(best.to_image(), size)


def media_duration(path: Path) -> float:
    """Seconds of a media file, from its container (0 when it does not say)."""
    import av

    try:
        with av.open(str(path)) as container:
            return float(container.duration or 0) / 1e6
    except FileNotFoundError:
        raise DataError(f"{path}: media file not found") from None
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable media file ({exc})") from None


def has_audio(path: Path) -> bool:
    import av

    try:
        with av.open(str(path)) as container:
            return bool(container.streams.audio)
    except FileNotFoundError:
        raise DataError(f"{path}: media file not found") from None
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable media file ({exc})") from None


def video_frame_and_audio(path: Path, size: int, seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """The middle frame of a video, uint8 [3, S, S], and `seconds` of its audio centred on it, float32 [n]."""
    middle = media_duration(path) / 2
    window = (max(0.0, middle - seconds / 2), max(0.0, middle - seconds / 2) + seconds)
    frame, wave = _decode_av(path, middle, window, size)
    assert frame is not None
    return frame, wave


def fbank_input(wave: np.ndarray, frames: int) -> np.ndarray:
    """A waveform -> the audio tokenizer's input, float32 [1, 128, frames], AST-normalized.

    Shorter clips are zero-padded (after normalization, so padding reads as silence-level input).
    """
    if len(wave) < SAMPLE_RATE // 40:  # shorter than one 25 ms frame
        wave = np.pad(wave, (0, SAMPLE_RATE // 40 - len(wave)))
    feats = fbank_clip(torch.from_numpy(np.ascontiguousarray(wave)), frames)  # [1, 128, frames]
    valid = min(frames, (len(wave) - SAMPLE_RATE // 40) // (SAMPLE_RATE // 100) + 1)
    out = torch.zeros_like(feats)
    out[..., :valid] = (feats[..., :valid] - FBANK_MEAN) / (2 * FBANK_STD)
    return out.numpy()
