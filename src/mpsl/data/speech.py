"""Spoken digits synthesised offline with the espeak-ng and flite command-line engines.

Many accents, speaker variants, speeds and pitches give a varied set of
"speakers", so that whole voices can be held out for testing.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16_000
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ENGINE_BINARIES = {"espeak": "espeak-ng", "flite": "flite"}
_INSTALL_HINT = "install the speech engines with `apt-get install espeak-ng flite`"

# espeak-ng defaults: 175 words per minute, pitch 50 on its 0..99 scale.
_ESPEAK_WPM = 175
_ESPEAK_PITCH = 50

_ESPEAK_ACCENTS = (
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-029",
    "en-us-nyc",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
)
_ESPEAK_VARIANTS = ("", "m3", "m7", "f2", "f4", "klatt")
_FLITE_VOICES = ("kal16", "awb", "rms", "slt")
_SPEEDS = (0.85, 1.0, 1.2)
_PITCHES = (0.8, 1.0, 1.3)


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker.

    ``speed`` and ``pitch`` are relative to the engine default (1.0 = default),
    so the same numbers mean roughly the same thing for both engines.
    """

    engine: str
    name: str
    speed: float = 1.0
    pitch: float = 1.0

    @property
    def voice_id(self) -> str:
        """Stable text id, used as a key and recorded in dataset metadata."""
        return f"{self.engine}:{self.name}:s{self.speed:g}:p{self.pitch:g}"


def available_engines() -> list[str]:
    """Engines whose binary is on PATH."""
    return [engine for engine, binary in ENGINE_BINARIES.items() if shutil.which(binary)]


def default_voices(engines: Sequence[str] | None = None) -> list[Voice]:
    """A fixed, varied voice list (64 voices with both engines) for the installed engines.

    Raises FileNotFoundError when no requested engine is installed.
    """
    engines = available_engines() if engines is None else list(engines)
    if not engines:
        raise FileNotFoundError(f"neither espeak-ng nor flite found: {_INSTALL_HINT}")
    voices: list[Voice] = []
    if "espeak" in engines:
        index = 0
        for accent in _ESPEAK_ACCENTS:
            for variant in _ESPEAK_VARIANTS:
                name = f"{accent}+{variant}" if variant else accent
                # Cycle speed and pitch so every accent/variant pair gets a distinct combination.
                speed = _SPEEDS[index % len(_SPEEDS)]
                pitch = _PITCHES[(index // len(_SPEEDS) + index) % len(_PITCHES)]
                voices.append(Voice("espeak", name, speed, pitch))
                index += 1
    if "flite" in engines:
        for name in _FLITE_VOICES:
            for speed in (0.85, 1.15):
                for pitch in (0.9, 1.15):
                    voices.append(Voice("flite", name, speed, pitch))
    return voices


def _command(voice: Voice, word: str, wav_path: Path) -> list[str]:
    """Command line that speaks ``word`` with ``voice`` into ``wav_path``."""
    if voice.engine == "espeak":
        wpm = round(_ESPEAK_WPM * voice.speed)
        pitch = int(np.clip(round(_ESPEAK_PITCH * voice.pitch), 0, 99))
        return [
            ENGINE_BINARIES["espeak"], "-v", voice.name, "-s", str(wpm), "-p", str(pitch),
            "-w", str(wav_path), word,
        ]  # fmt: skip
    if voice.engine == "flite":
        return [
            ENGINE_BINARIES["flite"], "-voice", voice.name,
            "--setf", f"duration_stretch={1.0 / voice.speed:.4f}",
            "--setf", f"f0_shift={voice.pitch:.4f}",
            "-t", word, "-o", str(wav_path),
        ]  # fmt: skip
    raise ValueError(
        f"unknown speech engine {voice.engine!r}; expected one of {list(ENGINE_BINARIES)}"
    )


def resample(wave: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """Band-limited resampling by truncating / zero-padding the spectrum (no aliasing)."""
    if source_rate == target_rate or wave.size == 0:
        return wave.astype(np.float32)
    n_out = max(1, round(wave.size * target_rate / source_rate))
    spectrum = np.fft.rfft(wave.astype(np.float64))
    n_keep = min(spectrum.size, n_out // 2 + 1)
    resized = np.zeros(n_out // 2 + 1, dtype=np.complex128)
    resized[:n_keep] = spectrum[:n_keep]
    out = np.fft.irfft(resized, n=n_out) * (n_out / wave.size)
    return out.astype(np.float32)


def _synthesize_one(voice: Voice, digit: int, folder: Path) -> np.ndarray:
    """Run one engine call and return 16 kHz mono float32 audio."""
    wav_path = folder / f"{voice.voice_id.replace(':', '_').replace('+', '_')}_{digit}.wav"
    command = _command(voice, DIGIT_WORDS[digit], wav_path)
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not wav_path.is_file():
        raise RuntimeError(
            f"{command[0]} failed for voice {voice.voice_id} digit {digit}: {result.stderr.strip()}"
        )
    wave, rate = sf.read(wav_path, dtype="float32", always_2d=True)  # [samples, channels]
    mono = wave.mean(axis=1)  # [samples]
    return resample(mono, int(rate), SAMPLE_RATE)


def synthesize(
    voices: Sequence[Voice],
    digits: Iterable[int] = range(10),
    workers: int = 2,
) -> dict[tuple[str, int], np.ndarray]:
    """Spoken digits {(voice_id, digit): 16 kHz float32 wave}, in parallel engine calls."""
    digits = list(digits)
    unknown = sorted({v.engine for v in voices} - set(ENGINE_BINARIES))
    if unknown:
        raise ValueError(
            f"unknown speech engine(s) {unknown}; expected one of {list(ENGINE_BINARIES)}"
        )
    missing = sorted(
        {ENGINE_BINARIES[v.engine] for v in voices if not shutil.which(ENGINE_BINARIES[v.engine])}
    )
    if missing:
        raise FileNotFoundError(f"speech engine(s) {', '.join(missing)} not found: {_INSTALL_HINT}")
    jobs = [(voice, digit) for voice in voices for digit in digits]
    with tempfile.TemporaryDirectory(prefix="mpsl-speech-") as tmp:
        folder = Path(tmp)
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            waves = list(pool.map(lambda job: _synthesize_one(job[0], job[1], folder), jobs))
    return {
        (voice.voice_id, digit): wave for (voice, digit), wave in zip(jobs, waves, strict=False)
    }
