"""Whisper's log-mel, as a torch implementation and a cuFFT + fused Triton path matching it.

``log_mel_reference`` (torch, any device) equals openai-whisper's ``log_mel_spectrogram`` clip by
clip.

``log_mel_triton`` runs the FFT on cuFFT, as one batched ``torch.stft`` over Whisper's centred,
reflect-padded periodic Hann frames. One Triton kernel then reads the complex spectrum once and does
the rest in registers. It computes the power (``re^2 + im^2``), the mel product, the clamp and
``log10``. The mel product runs on TF32 tensor cores. It sums non-negative terms, so TF32 keeps the
1e-3 parity. The kernel stores the log-mel and folds each block's maximum into its clip's peak with
an atomic max.

A clip's peak is known only once all its blocks have run. The per-clip ``max(x, peak - 8)`` and
``(x + 4) / 4`` are therefore a second, elementwise launch over the log-mel, which is a fifth of the
spectrum's bytes.

The FFT does O(n log n) work. Multiplying each frame by a dense 400 x 201 DFT basis in TF32x3
instead took 5.3 ms for 64 x 30 s on an H200. That was 3.3x slower than torchaudio
(``benchmarks_perf/RESULTS.md``, 2026-12-04).
"""

from __future__ import annotations

from functools import cache

import torch
import triton
import triton.language as tl

from qwen_audio.whisper_mel import (
    DYNAMIC_RANGE,
    HOP_LENGTH,
    LOG_MEL_FLOOR,
    N_FFT,
    NUM_BINS,
    mel_filters,
    stft_window,
)

BLOCK_FRAMES = 64
BLOCK_BINS = 32
# 224: filterbank columns past 201 are zero
PADDED_BINS = triton.cdiv(NUM_BINS, BLOCK_BINS) * BLOCK_BINS
NORMALISE_BLOCK = 1024


def log_mel_reference(audio: torch.Tensor, n_mels: int = 80) -> torch.Tensor:
    """Normalised log-mel ``[..., n_mels, samples // 160]`` of float32 ``audio [..., samples]``.

    It is computed in torch ops. It is written for the CPU, where DataLoader workers run it.
    ``benchmarks_perf/bench_mel.py`` times it against openai-whisper. It runs one ``torch.stft`` per
    clip, since a batched call is ~4x slower there. It takes the power as ``re * re + im * im`` on
    the real view of the spectrum, without the square root of ``abs()``. It writes the mel product
    straight into the output. The last frame is left out of that product rather than sliced off the
    spectrum. The log and the normalisation run in place.

    Clips never mix, so a clip gives the same features alone or in any batch.
    """
    batch_shape, num_samples = audio.shape[:-1], audio.shape[-1]
    num_frames = (
        num_samples // HOP_LENGTH
    )  # the centred STFT gives one frame more, which Whisper drops
    window, filters = stft_window(audio.device), mel_filters(n_mels, audio.device)
    clips = audio.reshape(-1, num_samples)
    out = torch.empty(clips.shape[0], n_mels, num_frames, device=audio.device, dtype=torch.float32)
    for clip, mel in zip(clips, out):
        spectrum = torch.view_as_real(
            torch.stft(clip, N_FFT, HOP_LENGTH, window=window, return_complex=True)
        )
        power = spectrum[..., 0].square()
        power.addcmul_(spectrum[..., 1], spectrum[..., 1])
        torch.matmul(filters, power[:, :num_frames], out=mel)
    log_mel = out.clamp_(min=LOG_MEL_FLOOR).log10_()
    torch.maximum(log_mel, log_mel.amax(dim=(-2, -1), keepdim=True) - DYNAMIC_RANGE, out=log_mel)
    return log_mel.add_(4.0).div_(4.0).reshape(*batch_shape, n_mels, num_frames)


@cache
def _padded_filterbank(n_mels: int, device: torch.device) -> torch.Tensor:
    """Mel filterbank ``[next_power_of_2(n_mels), PADDED_BINS]``, zero-padded.

    The padding lets tiles load without masks.
    """
    filters = torch.zeros(triton.next_power_of_2(n_mels), PADDED_BINS, dtype=torch.float32)
    filters[:n_mels, :NUM_BINS] = mel_filters(n_mels)
    return filters.to(device)


@triton.jit
def _mel_epilogue_kernel(
    spectrum_ptr,
    filters_ptr,
    out_ptr,
    peak_ptr,
    num_frames,
    n_mels,
    clip_stride,
    bin_stride,
    frame_stride,
    FLOOR: tl.constexpr,
    NUM_BINS: tl.constexpr,
    PADDED_BINS: tl.constexpr,
    PADDED_MELS: tl.constexpr,
    BLOCK_FRAMES: tl.constexpr,
    BLOCK_BINS: tl.constexpr,
):
    """Compute power, mel product, clamp and log10 for one (block of frames, clip).

    The kernel stores the log-mel. The input is the real view of a ``[clip, bin, frame]`` complex
    spectrum. Its strides are in floats, with re and im adjacent. The kernel also atomically maxes
    the clip's peak.
    """
    frame_block = tl.program_id(0)
    clip = tl.program_id(1).to(tl.int64)
    frames = frame_block * BLOCK_FRAMES + tl.arange(0, BLOCK_FRAMES)
    frame_ok = frames < num_frames
    mels = tl.arange(0, PADDED_MELS)
    parts = tl.arange(0, 2)  # re, im

    mel = tl.zeros([PADDED_MELS, BLOCK_FRAMES], dtype=tl.float32)
    for bin0 in range(0, PADDED_BINS, BLOCK_BINS):
        bins = bin0 + tl.arange(0, BLOCK_BINS)
        offsets = (
            clip * clip_stride
            + bins[:, None, None] * bin_stride
            + frames[None, :, None] * frame_stride
            + parts[None, None, :]
        )
        mask = (bins[:, None, None] < NUM_BINS) & frame_ok[None, :, None]
        spectrum = tl.load(spectrum_ptr + offsets, mask=mask, other=0.0)
        power = tl.sum(spectrum * spectrum, axis=2)  # [BLOCK_BINS, BLOCK_FRAMES]
        filters = tl.load(filters_ptr + mels[:, None] * PADDED_BINS + bins[None, :])
        mel = tl.dot(filters, power, mel, input_precision="tf32")

    log_mel = tl.log2(tl.maximum(mel, FLOOR)) * 0.30102999566398120  # log10(x) = log2(x) * log10(2)
    valid = (mels[:, None] < n_mels) & frame_ok[None, :]
    out = out_ptr + clip * n_mels * num_frames + mels[:, None] * num_frames + frames[None, :]
    tl.store(out, log_mel, mask=valid)
    tl.atomic_max(
        peak_ptr + clip, tl.max(tl.max(tl.where(valid, log_mel, float("-inf")), axis=1), axis=0)
    )


@triton.jit
def _normalise_kernel(
    out_ptr,
    peak_ptr,
    values_per_clip,
    DYNAMIC_RANGE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    clip = tl.program_id(1).to(tl.int64)
    floor = tl.load(peak_ptr + clip) - DYNAMIC_RANGE
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < values_per_clip
    pointers = out_ptr + clip * values_per_clip + offsets
    log_mel = tl.load(pointers, mask=mask)
    tl.store(pointers, (tl.maximum(log_mel, floor) + 4.0) / 4.0, mask=mask)


def log_mel_triton(audio: torch.Tensor, n_mels: int = 80) -> torch.Tensor:
    """Compute the log-mel of float32 ``audio [..., samples]`` with cuFFT and the fused epilogue.

    Like the reference, it returns ``[..., n_mels, samples // 160]``.
    """
    if audio.dtype != torch.float32:
        raise ValueError(f"log_mel_triton expects float32 audio, got dtype {audio.dtype}")
    batch_shape, num_samples = audio.shape[:-1], audio.shape[-1]
    if num_samples <= N_FFT // 2:
        raise ValueError(
            f"audio needs more than {N_FFT // 2} samples for Whisper's reflect padding, "
            f"got {num_samples}"
        )
    waveforms = audio.reshape(-1, num_samples)
    num_clips, num_frames = waveforms.shape[0], num_samples // HOP_LENGTH
    out = torch.empty(num_clips, n_mels, num_frames, device=audio.device, dtype=torch.float32)
    if num_clips == 0:
        return out.reshape(*batch_shape, n_mels, num_frames)
    # [clip, bin, frame + 1] complex: the epilogue never reads the last frame, which Whisper drops.
    spectrum = torch.view_as_real(
        torch.stft(
            waveforms, N_FFT, HOP_LENGTH, window=stft_window(audio.device), return_complex=True
        )
    )
    peak = torch.full((num_clips,), float("-inf"), device=audio.device, dtype=torch.float32)
    _mel_epilogue_kernel[(triton.cdiv(num_frames, BLOCK_FRAMES), num_clips)](
        spectrum,
        _padded_filterbank(n_mels, audio.device),
        out,
        peak,
        num_frames,
        n_mels,
        spectrum.stride(0),
        spectrum.stride(1),
        spectrum.stride(2),
        FLOOR=LOG_MEL_FLOOR,
        NUM_BINS=NUM_BINS,
        PADDED_BINS=PADDED_BINS,
        PADDED_MELS=triton.next_power_of_2(n_mels),
        BLOCK_FRAMES=BLOCK_FRAMES,
        BLOCK_BINS=BLOCK_BINS,
        num_warps=4,
    )
    values_per_clip = n_mels * num_frames
    _normalise_kernel[(triton.cdiv(values_per_clip, NORMALISE_BLOCK), num_clips)](
        out,
        peak,
        values_per_clip,
        DYNAMIC_RANGE=DYNAMIC_RANGE,
        BLOCK=NORMALISE_BLOCK,
    )
    return out.reshape(*batch_shape, n_mels, num_frames)
