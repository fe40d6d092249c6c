"""Audio front end: decoding, Whisper's 80-bin log-mel, the released model's length bookkeeping.

Everything here reproduces the released Qwen-Audio ``audio.py``, itself openai-whisper's front end.
A loaded checkpoint is thus fed the features it was trained on. One difference is deliberate. In a
batch, each example is normalised by its *own* maximum. A clip therefore gives the same features
alone or in any batch.
"""

from __future__ import annotations

import functools
import os
from typing import BinaryIO

import numpy as np
import soundfile
import torch
import torchaudio

from qwen_audio.errors import AudioError
from qwen_audio.kernels import log_mel
from qwen_audio.lengths import MIN_SAMPLES, N_SAMPLES, audio_lengths, conv_frames
from qwen_audio.whisper_mel import N_FFT, SAMPLE_RATE

AudioSource = str | os.PathLike | BinaryIO


def load_audio(source: AudioSource, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Decode wav/flac/ogg/mp3 with soundfile into a 1-D float32 mono tensor at ``sample_rate``.

    Channels are averaged. Resampling uses torchaudio's band-limited windowed-sinc ``Resample``. Its
    filter bank is built once per rate pair (:func:`resampler`), because building it costs as much
    as applying it.

    A bad file raises :class:`~qwen_audio.errors.AudioError` naming it. A file is bad if it does not
    decode, holds no samples or NaN/inf ones, or lasts under 30 ms. No encoder reads a clip under
    ``MIN_SAMPLES`` (30 ms).
    """
    name = (
        os.fspath(source)
        if isinstance(source, (str, os.PathLike))
        else getattr(source, "name", repr(source))
    )
    if isinstance(source, (str, os.PathLike)) and not os.path.exists(source):
        raise FileNotFoundError(f"audio file not found: {name}")
    try:
        data, rate = soundfile.read(source, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as err:
        raise AudioError(f"cannot decode audio file {name}: {err}") from err
    if data.shape[0] == 0:
        raise AudioError(f"audio file {name} has no samples")
    if not np.isfinite(data).all():
        raise AudioError(f"audio file {name} contains NaN or infinite samples")
    if data.shape[0] * SAMPLE_RATE < MIN_SAMPLES * rate:
        raise AudioError(
            f"audio file {name} lasts {data.shape[0] / rate * 1000:.1f} ms, shorter than the "
            f"{MIN_SAMPLES * 1000 // SAMPLE_RATE} ms the encoder needs"
        )
    audio = torch.from_numpy(data.mean(axis=1))
    if rate != sample_rate:
        audio = resampler(rate, sample_rate)(audio)
    return audio.contiguous()


@functools.lru_cache(maxsize=8)
def resampler(orig_rate: int, new_rate: int) -> torchaudio.transforms.Resample:
    """Return torchaudio's ``Resample`` from ``orig_rate`` to ``new_rate`` Hz.

    Its kernel is computed once and kept. It applies the same filter as
    ``torchaudio.functional.resample``.
    """
    return torchaudio.transforms.Resample(orig_rate, new_rate)


def pad_or_trim(audio: torch.Tensor, length: int = N_SAMPLES, *, axis: int = -1) -> torch.Tensor:
    """Zero-pad or trim ``audio`` along ``axis`` to ``length`` samples, as Whisper does.

    ``length`` is 30 s by default.
    """
    size = audio.shape[axis]
    if size > length:
        return audio.narrow(axis, 0, length)
    if size < length:
        pad = [0, 0] * (audio.dim() - 1 - axis % audio.dim()) + [0, length - size]
        return torch.nn.functional.pad(audio, pad)
    return audio


def log_mel_spectrogram(
    audio: torch.Tensor | np.ndarray, n_mels: int = 80, kernel_backend: str = "auto"
) -> torch.Tensor:
    """Compute Whisper's log-mel of float audio at 16 kHz.

    It maps ``[..., samples]`` to ``[..., n_mels, samples // 160]``.

    The steps are a power STFT, a mel filterbank, ``log10`` clamped at 1e-10, a floor, and a
    rescale. The STFT uses n_fft 400, hop 160 and a periodic Hann window. It is centred with reflect
    padding, and its last frame is dropped. Values below each example's maximum minus 8 are raised
    to that floor. The rescale is ``(x + 4) / 4``. The constants live in ``qwen_audio.whisper_mel``.

    ``kernel_backend`` is "torch" (any device), "triton" (fused kernel, CUDA) or "auto" (see
    ``qwen_audio.kernels``).
    """
    audio = torch.as_tensor(audio)
    if not audio.is_floating_point():
        raise ValueError(f"audio must be floating point samples, got dtype {audio.dtype}")
    if not torch.isfinite(audio).all():
        raise ValueError("audio contains NaN or infinite samples")
    if audio.shape[-1] <= N_FFT // 2:
        raise ValueError(
            f"audio of {audio.shape[-1]} samples is too short for the centred STFT (needs > {N_FFT // 2}); "
            "pad it first, e.g. with pad_or_trim"
        )
    return log_mel(audio.float(), n_mels, kernel_backend)


def audio_features(
    waveform: torch.Tensor, source: str, n_mels: int = 80, mel_frames: int | None = None
) -> tuple[torch.Tensor, int]:
    """Build the release's encoder input for one clip and return it with the valid mel length.

    The input is the log-mel of the clip zero-padded to 30 s. It is kept up to the
    ``2 * encoder_frames + 1`` frames an encoder may read (``AudioEncoderConfig.mel_lookahead``).
    The valid mel length is ``mel_frames`` when given, else ``samples // 160``. The prompt's
    :class:`~qwen_audio.clips.Clip` has ``mel_frames``.

    Only ``2 * N_FFT`` samples of the zero padding are transformed, not all 30 s. Every kept frame's
    window ends before that, so it reads the same samples. The frames dropped are all-zero ones at
    the log floor. They never hold the example's maximum. A 2 s clip costs a fifteenth of the 30 s
    transform.
    """
    lengths = audio_lengths(waveform.numel(), source=source)
    if mel_frames is None:
        mel_frames = lengths.mel_frames
    mel = log_mel_spectrogram(
        pad_or_trim(waveform, min(N_SAMPLES, lengths.samples + 2 * N_FFT)), n_mels
    )
    return mel[:, : 2 * conv_frames(mel_frames) + 1], mel_frames


def _random_bands(
    extent: torch.Tensor, max_width: torch.Tensor, size: int, generator: torch.Generator | None
) -> torch.Tensor:
    """Draw one band per example inside ``[0, extent)``, returned as a ``[B, size]`` mask.

    The width is drawn from U{0..max_width} and the start from U{0..extent - width}.
    """
    limit = torch.minimum(max_width, extent)
    width = (torch.rand(extent.shape, generator=generator) * (limit + 1)).long().clamp(max=limit)
    start = (torch.rand(extent.shape, generator=generator) * (extent - width + 1)).long()
    index = torch.arange(size)
    return (index >= start[:, None]) & (index < (start + width)[:, None])


def spec_augment(
    mel: torch.Tensor,
    lengths: torch.Tensor,
    freq_mask_param: int = 27,
    num_freq_masks: int = 1,
    time_mask_param: int = 100,
    num_time_masks: int = 1,
    max_time_fraction: float = 1.0,
    mask_value: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Apply SpecAugment to a batch ``[B, n_mels, T]``.

    Example ``b`` is valid for its first ``lengths[b]`` frames. Defaults are the "LibriSpeech Basic"
    policy (F=27, m_F=1, T=100, m_T=1, p=1.0) named by the paper's Table 6.

    Masks are drawn here, not with ``torchaudio.functional.mask_along_axis_iid``. That function
    takes no generator, so runs could not be reproduced per worker. It also cannot keep a time mask
    inside each example's valid frames. Here a time mask is at most
    ``min(time_mask_param, max_time_fraction * length)`` wide. It lies inside ``[0, length)``.
    Frequency masks also stop at ``length``, so padding stays padding. Returns a new tensor.
    """
    if mel.dim() != 3 or lengths.shape != (mel.shape[0],):
        raise ValueError(
            f"expected mel [B, n_mels, T] and lengths [B], got {tuple(mel.shape)} and "
            f"{tuple(lengths.shape)}"
        )
    batch, n_mels, frames = mel.shape
    lengths = lengths.detach().long().cpu().clamp(max=frames)
    masked = torch.zeros(batch, n_mels, frames, dtype=torch.bool)
    full_mels = torch.full((batch,), n_mels)
    for _ in range(num_freq_masks):
        masked |= _random_bands(
            full_mels, torch.full((batch,), freq_mask_param), n_mels, generator
        )[:, :, None]
    time_width = torch.minimum(
        torch.full((batch,), time_mask_param), (lengths * max_time_fraction).long()
    )
    for _ in range(num_time_masks):
        masked |= _random_bands(lengths, time_width, frames, generator)[:, None, :]
    masked &= (torch.arange(frames) < lengths[:, None])[:, None, :]
    return mel.masked_fill(masked.to(mel.device), mask_value)
