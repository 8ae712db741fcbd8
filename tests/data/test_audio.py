"""Tests for the log-mel front end and the offline speech synthesis."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mpsl.data.audio import _hz_to_mel, _mel_to_hz, log_mel_spectrogram, mel_filterbank
from mpsl.data.speech import SAMPLE_RATE, Voice, default_voices, resample, synthesize


def _band_centres_hz(n_mels: int, sample_rate: int) -> torch.Tensor:
    top = _hz_to_mel(torch.tensor(sample_rate / 2.0, dtype=torch.float64))
    mels = torch.linspace(0.0, top.item(), n_mels + 2, dtype=torch.float64)
    return _mel_to_hz(mels)[1:-1]


def test_mel_filterbank_shape_and_partition_of_unity() -> None:
    # Prepare
    n_freqs, n_mels, rate = 257, 32, 16_000

    # Execute
    fbank = mel_filterbank(n_freqs, n_mels, rate)

    # Assert
    assert fbank.shape == (n_freqs, n_mels)
    assert torch.all(fbank >= 0)
    centres = _band_centres_hz(n_mels, rate)
    freqs = torch.linspace(0, rate / 2, n_freqs, dtype=torch.float64)
    between = (freqs >= centres[0]) & (freqs <= centres[-1])
    row_sums = fbank.sum(dim=1)
    torch.testing.assert_close(row_sums[between], torch.ones(int(between.sum())), atol=1e-5, rtol=0)
    assert torch.all(fbank.sum(dim=0) > 0), "every mel band must cover at least one bin"


def test_mel_filterbank_rejects_bad_range() -> None:
    with pytest.raises(ValueError):
        mel_filterbank(257, 32, 16_000, f_min=5000, f_max=4000)


def test_pure_sine_peaks_in_its_mel_band() -> None:
    # Prepare
    n_mels, rate, band = 32, 16_000, 12
    freq = float(_band_centres_hz(n_mels, rate)[band])
    t = torch.arange(12_800, dtype=torch.float32) / rate
    wave = torch.sin(2 * math.pi * freq * t)

    # Execute
    log_mel = log_mel_spectrogram(
        wave, rate, n_mels=n_mels, n_fft=512, hop_length=320, win_length=400
    )

    # Assert
    assert log_mel.shape == (n_mels, 12_800 // 320 + 1)
    assert int(log_mel.mean(dim=1).argmax()) == band


def test_log_mel_keeps_batch_dimensions() -> None:
    # Prepare
    wave = torch.randn(2, 3, 4000, generator=torch.Generator().manual_seed(0))

    # Execute
    log_mel = log_mel_spectrogram(
        wave, 16_000, n_mels=16, n_fft=256, hop_length=100, win_length=200
    )

    # Assert
    assert log_mel.shape == (2, 3, 16, 41)
    torch.testing.assert_close(
        log_mel[1, 2], log_mel_spectrogram(wave[1, 2], 16_000, 16, 256, 100, 200)
    )


def test_resample_preserves_a_tone() -> None:
    # Prepare
    rate_in = 22_050
    t = np.arange(rate_in) / rate_in
    wave = np.sin(2 * np.pi * 440.0 * t).astype(np.float32)

    # Execute
    out = resample(wave, rate_in, SAMPLE_RATE)

    # Assert
    assert out.shape == (SAMPLE_RATE,) and out.dtype == np.float32
    spectrum = np.abs(np.fft.rfft(out))
    assert abs(np.argmax(spectrum) - 440) <= 1  # 1 s of audio -> 1 Hz bins


def test_default_voices_are_varied_and_unique() -> None:
    # Execute
    voices = default_voices()

    # Assert
    ids = [v.voice_id for v in voices]
    assert len(voices) >= 20
    assert len(set(ids)) == len(ids)
    assert {v.engine for v in voices} == {"espeak", "flite"}


def test_synthesize_two_voices_gives_plausible_words() -> None:
    # Prepare
    voices = [Voice("espeak", "en-us+f2", speed=1.0, pitch=1.2), Voice("flite", "slt", 0.9, 1.0)]

    # Execute
    clips = synthesize(voices, digits=[3, 7], workers=2)

    # Assert
    assert set(clips) == {(v.voice_id, d) for v in voices for d in (3, 7)}
    for wave in clips.values():
        assert wave.dtype == np.float32 and wave.ndim == 1
        assert 0.2 < wave.size / SAMPLE_RATE < 2.0
        assert float(np.sqrt(np.mean(wave**2))) > 0.01


def test_synthesize_rejects_unknown_engine() -> None:
    with pytest.raises(ValueError, match="festival"):
        synthesize([Voice("festival", "kal")], digits=[1])


def test_missing_engines_give_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    monkeypatch.setattr("mpsl.data.speech.shutil.which", lambda name: None)

    # Execute / Assert
    with pytest.raises(FileNotFoundError, match="apt-get install espeak-ng flite"):
        synthesize([Voice("espeak", "en-us")], digits=[1])
    with pytest.raises(FileNotFoundError, match="apt-get install espeak-ng flite"):
        default_voices()
