"""The fbank matches Kaldi's: checked against kaldi-native-fbank, an independent C++ implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mpsl.data.fbank import CLIP_FRAMES, fbank_clip, kaldi_fbank


def _wave(seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(16000 * seconds)) / 16000
    noise = np.random.default_rng(0).standard_normal(t.size)
    return (0.3 * np.sin(2 * math.pi * 440 * t) + 0.05 * noise).astype(np.float32)


def test_fbank_equals_kaldi_native_fbank() -> None:
    import kaldi_native_fbank as knf

    # Prepare: Kaldi's own options as AST sets them (Kaldi refuses 128 bins at 16 kHz; 80 is the common setting)
    wave = _wave()
    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0
    opts.frame_opts.window_type = "hanning"
    opts.frame_opts.samp_freq = 16000
    opts.mel_opts.num_bins = 80
    reference = knf.OnlineFbank(opts)
    reference.accept_waveform(16000, wave.tolist())
    reference.input_finished()
    expected = np.stack([reference.get_frame(i) for i in range(reference.num_frames_ready)])

    # Execute
    ours = kaldi_fbank(torch.from_numpy(wave), num_mel_bins=80).numpy()

    # Assert: the same frames, log energies equal to 1e-3
    assert ours.shape == expected.shape == (98, 80)
    assert np.abs(ours - expected).max() < 1e-3


@pytest.mark.parametrize(("clip", "seconds"), [("1s", 1.0), ("10.24s", 10.24)])
def test_clip_presets_give_the_papers_token_grids(clip: str, seconds: float) -> None:
    feats = fbank_clip(torch.from_numpy(_wave(0.7)), CLIP_FRAMES[clip])  # shorter audio: zero-padded

    assert feats.shape == (1, 128, round(100 * seconds)) and torch.isfinite(feats).all()
    time_patches = (feats.shape[2] - 16) // 10 + 1  # AST: 16x16 patches, stride 10
    assert 1 + 12 * time_patches == {"1s": 109, "10.24s": 1213}[clip]


def test_fbank_refuses_what_it_cannot_frame() -> None:
    with pytest.raises(ValueError, match="mono"):
        kaldi_fbank(torch.zeros(2, 16000))
    with pytest.raises(ValueError, match="fewer than one"):
        kaldi_fbank(torch.zeros(100))
