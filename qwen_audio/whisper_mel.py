"""What Whisper's log-mel is: its STFT geometry, window, mel filterbank and log range.

There is no code here that computes it.

The one place these numbers live: the front end (``qwen_audio.audio``) and the kernels
(``qwen_audio.kernels``, torch and Triton) both import them from here, so neither has to import the
other.
"""

from __future__ import annotations

from functools import cache

import torch

SAMPLE_RATE = 16000
N_FFT = 400  # 25 ms window
HOP_LENGTH = 160  # 10 ms hop
NUM_BINS = N_FFT // 2 + 1  # 201 one-sided DFT bins
LOG_MEL_FLOOR = 1e-10
DYNAMIC_RANGE = 8.0  # log10 units kept below each example's maximum


@cache
def stft_window(device: torch.device) -> torch.Tensor:
    """Whisper's window: the periodic Hann window of ``N_FFT`` taps, float32, cached per device."""
    return torch.hann_window(N_FFT, device=device)


@cache
def _mel_filters_cpu(n_mels: int) -> torch.Tensor:
    # Computed in float64 and rounded once, as librosa (Whisper's mel_filters.npz) and transformers
    # do: torchaudio's float32 filterbank is 1.6e-7 off, which moves the 128-bin log-mel by 1.5e-5.
    from transformers.audio_utils import mel_filter_bank

    filters = mel_filter_bank(
        num_frequency_bins=NUM_BINS,
        num_mel_filters=n_mels,
        min_frequency=0.0,
        max_frequency=SAMPLE_RATE / 2,
        sampling_rate=SAMPLE_RATE,
        norm="slaney",
        mel_scale="slaney",
    )
    return torch.from_numpy(filters.T).float().contiguous()


def mel_filters(n_mels: int = 80, device: torch.device | str = "cpu") -> torch.Tensor:
    """Slaney-scale, area-normalised mel filterbank ``[n_mels, 201]``: the matrix Whisper ships in
    ``mel_filters.npz``."""
    return _mel_filters_cpu(n_mels).to(device)
