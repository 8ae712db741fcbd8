"""Log-mel features in plain torch, so the data pipeline needs no audio library."""

from __future__ import annotations

import torch


def _hz_to_mel(freq: torch.Tensor) -> torch.Tensor:
    """HTK mel scale."""
    return 2595.0 * torch.log10(1.0 + freq / 700.0)


def _mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    """Inverse of the HTK mel scale."""
    return 700.0 * (torch.pow(10.0, mel / 2595.0) - 1.0)


def mel_filterbank(
    n_freqs: int,
    n_mels: int,
    sample_rate: int,
    f_min: float = 0.0,
    f_max: float | None = None,
) -> torch.Tensor:
    """Triangular HTK-mel filters [n_freqs, n_mels] mapping STFT bins to mel bands.

    Filters are unnormalised (peak 1), so between the first and last band centre
    the weights of every frequency bin sum to 1.
    """
    if n_freqs < 2 or n_mels < 1:
        raise ValueError(f"need n_freqs >= 2 and n_mels >= 1, got {n_freqs}, {n_mels}")
    f_max = sample_rate / 2.0 if f_max is None else float(f_max)
    if not 0.0 <= f_min < f_max <= sample_rate / 2.0:
        raise ValueError(f"need 0 <= f_min < f_max <= sample_rate/2, got {f_min}, {f_max}")
    bin_freqs = torch.linspace(0.0, sample_rate / 2.0, n_freqs, dtype=torch.float64)
    mel_points = torch.linspace(
        _hz_to_mel(torch.tensor(f_min, dtype=torch.float64)).item(),
        _hz_to_mel(torch.tensor(f_max, dtype=torch.float64)).item(),
        n_mels + 2,
        dtype=torch.float64,
    )
    hz_points = _mel_to_hz(mel_points)  # [n_mels + 2]: left edge, centres, right edge
    widths = hz_points[1:] - hz_points[:-1]  # [n_mels + 1]
    offsets = hz_points.unsqueeze(0) - bin_freqs.unsqueeze(1)  # [n_freqs, n_mels + 2]
    rising = -offsets[:, :-2] / widths[:-1]  # [n_freqs, n_mels]
    falling = offsets[:, 2:] / widths[1:]  # [n_freqs, n_mels]
    weights = torch.clamp(torch.minimum(rising, falling), min=0.0)
    return weights.to(torch.float32)


def log_mel_spectrogram(
    wave: torch.Tensor,
    sample_rate: int,
    n_mels: int,
    n_fft: int,
    hop_length: int,
    win_length: int,
) -> torch.Tensor:
    """log(mel power + 1e-6) of wave [..., samples] -> [..., n_mels, frames].

    Frames are centred (torch.stft ``center=True``), so there are
    ``samples // hop_length + 1`` of them.
    """
    if wave.dim() < 1:
        raise ValueError("wave must have at least one (time) dimension")
    batch_shape = wave.shape[:-1]
    flat = wave.reshape(-1, wave.shape[-1]).to(torch.float32)  # [B, samples]
    window = torch.hann_window(win_length, dtype=torch.float32, device=flat.device)
    spec = torch.stft(
        flat,
        n_fft=n_fft,
        hop_length=hop_length,
        win_length=win_length,
        window=window,
        center=True,
        return_complex=True,
    )  # [B, n_fft//2 + 1, frames]
    power = spec.real.square() + spec.imag.square()
    fbank = mel_filterbank(n_fft // 2 + 1, n_mels, sample_rate).to(flat.device)
    mel = torch.matmul(power.transpose(1, 2), fbank).transpose(1, 2)  # [B, n_mels, frames]
    log_mel = torch.log(mel + 1e-6)
    return log_mel.reshape(*batch_shape, n_mels, log_mel.shape[-1])
