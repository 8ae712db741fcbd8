"""Kaldi-compatible log-mel filterbank features in torch, as AST (and the paper's audio tokenizer) reads audio.

Matches Kaldi's `compute-fbank-feats` (and torchaudio.compliance.kaldi.fbank) with AST's settings:
25 ms frames every 10 ms without dither, per-frame DC removal, pre-emphasis 0.97, a Hanning window,
FFT size rounded up to a power of two, power spectrum, `num_mel_bins` triangular filters on Kaldi's
mel scale (1127 ln(1 + f / 700)) from 20 Hz to Nyquist, natural log floored at float epsilon.

    waveform [N] (mono, 16 kHz) -> [frames, num_mel_bins]
"""

from __future__ import annotations

import math

import torch

CLIP_FRAMES = {"1s": 100, "10.24s": 1024}  # the paper's two audio lengths, in 10 ms frames


def _mel(freq: torch.Tensor | float) -> torch.Tensor:
    return 1127.0 * torch.log1p(torch.as_tensor(freq, dtype=torch.float64) / 700.0)


def kaldi_mel_banks(num_bins: int, padded_window: int, sample_rate: float, low_freq: float = 20.0,
                    high_freq: float = 0.0) -> torch.Tensor:
    """[padded_window // 2 + 1, num_bins] weights; the Nyquist bin gets none, as in Kaldi."""
    nyquist = 0.5 * sample_rate
    high = high_freq if high_freq > 0 else nyquist + high_freq
    if not 0.0 <= low_freq < high <= nyquist:
        raise ValueError(f"need 0 <= low_freq < high_freq <= {nyquist}, got {low_freq}, {high}")
    num_fft_bins = padded_window // 2
    mel_low, mel_high = _mel(low_freq), _mel(high)
    delta = (mel_high - mel_low) / (num_bins + 1)
    edges = mel_low + delta * torch.arange(num_bins + 2, dtype=torch.float64)  # [num_bins + 2]
    left, center, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]  # [num_bins, 1] each
    mel = _mel(sample_rate / padded_window * torch.arange(num_fft_bins, dtype=torch.float64))[None]  # [1, bins]
    up, down = (mel - left) / (center - left), (right - mel) / (right - center)
    weights = torch.clamp(torch.minimum(up, down), min=0.0)  # [num_bins, num_fft_bins]
    weights = torch.where((mel > left) & (mel < right), weights, torch.zeros_like(weights))
    return torch.cat([weights, torch.zeros(num_bins, 1, dtype=torch.float64)], dim=1).T  # [num_fft_bins + 1, bins]


def kaldi_fbank(waveform: torch.Tensor, sample_rate: int = 16000, num_mel_bins: int = 128,
                frame_length_ms: float = 25.0, frame_shift_ms: float = 10.0, preemphasis: float = 0.97) -> torch.Tensor:
    """Log-mel filterbank of a mono waveform [N] -> [frames, num_mel_bins] (float32)."""
    if waveform.dim() != 1:
        raise ValueError(f"expected a mono waveform [N], got shape {tuple(waveform.shape)}")
    x = waveform.to(torch.float64)
    length = int(sample_rate * frame_length_ms / 1000)
    shift = int(sample_rate * frame_shift_ms / 1000)
    if x.numel() < length:
        raise ValueError(f"{x.numel()} samples are fewer than one {frame_length_ms} ms frame")
    frames = x.unfold(0, length, shift)  # [F, length], Kaldi's snip_edges: only whole frames
    frames = frames - frames.mean(dim=1, keepdim=True)  # remove the DC offset of each frame
    previous = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)  # x[i - 1], with x[-1] = x[0]
    frames = frames - preemphasis * previous
    n = torch.arange(length, dtype=torch.float64)
    frames = frames * (0.5 - 0.5 * torch.cos(2 * math.pi * n / (length - 1)))  # Kaldi's "hanning"
    padded = 1 << (length - 1).bit_length()  # next power of two
    power = torch.fft.rfft(frames, n=padded).abs() ** 2  # [F, padded // 2 + 1]
    energies = power @ kaldi_mel_banks(num_mel_bins, padded, sample_rate)  # [F, num_mel_bins]
    return torch.log(torch.clamp(energies, min=torch.finfo(torch.float32).eps)).to(torch.float32)


def fbank_clip(waveform: torch.Tensor, frames: int, sample_rate: int = 16000, num_mel_bins: int = 128) -> torch.Tensor:
    """A fixed-length clip for the audio tokenizer: fbank padded with zeros or cut to `frames` -> [1, bins, frames]."""
    feats = kaldi_fbank(waveform, sample_rate, num_mel_bins)  # [F, bins]
    feats = torch.nn.functional.pad(feats, (0, 0, 0, max(0, frames - feats.shape[0])))[:frames]  # [frames, bins]
    return feats.T.unsqueeze(0)  # [1, bins, frames]
