"""Whisper's log-mel: the torch implementation, and two Triton launches that must match it.

``log_mel_reference`` (torch, any device) equals openai-whisper's ``log_mel_spectrogram`` clip by clip.

The Triton path: one pass over the waveform, then an exact per-example normalisation.

Pass 1 (``_log_mel_kernel``), one program per (block of frames, example): gathers frames straight from the
waveform with the same reflect padding as ``torch.stft(center=True)``, multiplies them by a precomputed DFT basis
with the periodic Hann window folded in (cos and sin columns interleaved, so one matrix product gives real and
imaginary parts), squares to power, multiplies by the mel filterbank, takes ``log10`` of the clamped result,
stores it, and writes the block's maximum. Pass 2 (``_normalise_kernel``) reduces those block maxima per example
(exact: a maximum does not depend on order) and applies ``max(x, peak - 8)`` and ``(x + 4) / 4`` in place.

Precision: the DFT cancels across 400 taps over ~8 decades of power, so a single TF32 / fp16 / bf16 tensor-core
product misses the 1e-3 target by ~70x on speech; the DFT product runs as TF32x3 (three TF32 products that
recover fp32 accuracy at tensor-core speed). The mel product sums non-negative terms, so plain TF32 suffices.
The DFT is direct (400 taps x 201 bins), not a factorised 20 x 20 Cooley-Tukey: ~4x more FLOPs, but a single
dense product per tile keeps the kernel short; the benchmark prints the matrix-unit time it implies.
"""

from __future__ import annotations

import math
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
BLOCK_TAPS = 32
BLOCK_BINS = 64
PADDED_TAPS = triton.cdiv(N_FFT, BLOCK_TAPS) * BLOCK_TAPS  # 416: basis rows past 400 are zero
PADDED_BINS = triton.cdiv(NUM_BINS, BLOCK_BINS) * BLOCK_BINS  # 256: basis / filterbank columns past 201 are zero
DFT_PRECISION = "tf32x3"
NORMALISE_BLOCK = 1024


def log_mel_reference(audio: torch.Tensor, n_mels: int = 80) -> torch.Tensor:
    """Normalised log-mel of float32 ``audio [..., samples]`` in torch ops: ``[..., n_mels, samples // 160]``.

    Written for the CPU, where DataLoader workers run it (``benchmarks_perf/bench_mel.py`` times it against
    openai-whisper): one ``torch.stft`` per clip, since a batched call is ~4x slower there; the power as
    ``re * re + im * im`` on the real view of the spectrum, without the square root of ``abs()``; the mel product
    written straight into the output, the last frame left out of it rather than sliced off the spectrum; the log
    and the normalisation in place. Clips never mix, so a clip gives the same features alone or in any batch.
    """
    batch_shape, num_samples = audio.shape[:-1], audio.shape[-1]
    num_frames = num_samples // HOP_LENGTH  # the centred STFT gives one frame more, which Whisper drops
    window, filters = stft_window(audio.device), mel_filters(n_mels, audio.device)
    clips = audio.reshape(-1, num_samples)
    out = torch.empty(clips.shape[0], n_mels, num_frames, device=audio.device, dtype=torch.float32)
    for clip, mel in zip(clips, out):
        spectrum = torch.view_as_real(torch.stft(clip, N_FFT, HOP_LENGTH, window=window, return_complex=True))
        power = spectrum[..., 0].square()
        power.addcmul_(spectrum[..., 1], spectrum[..., 1])
        torch.matmul(filters, power[:, :num_frames], out=mel)
    log_mel = out.clamp_(min=LOG_MEL_FLOOR).log10_()
    torch.maximum(log_mel, log_mel.amax(dim=(-2, -1), keepdim=True) - DYNAMIC_RANGE, out=log_mel)
    return log_mel.add_(4.0).div_(4.0).reshape(*batch_shape, n_mels, num_frames)


@cache
def _windowed_dft_basis(device: torch.device) -> torch.Tensor:
    """``[PADDED_TAPS, 2 * PADDED_BINS]`` float32: column ``2f`` is ``hann[k] cos(2 pi k f / 400)``, ``2f + 1`` its sin.

    Built in float64 so the only rounding is the final cast; the sign of the sin column is irrelevant to power.
    """
    taps = torch.arange(N_FFT, dtype=torch.float64)
    window = torch.hann_window(N_FFT, periodic=True, dtype=torch.float64)
    angle = 2 * math.pi * torch.outer(taps, torch.arange(NUM_BINS, dtype=torch.float64)) / N_FFT
    basis = torch.zeros(PADDED_TAPS, PADDED_BINS, 2, dtype=torch.float64)
    basis[:N_FFT, :NUM_BINS, 0] = window[:, None] * torch.cos(angle)
    basis[:N_FFT, :NUM_BINS, 1] = window[:, None] * torch.sin(angle)
    return basis.reshape(PADDED_TAPS, 2 * PADDED_BINS).to(device=device, dtype=torch.float32)


@cache
def _padded_filterbank(n_mels: int, device: torch.device) -> torch.Tensor:
    """Mel filterbank transposed to ``[PADDED_BINS, next_power_of_2(n_mels)]`` with zero padding."""
    filters = torch.zeros(PADDED_BINS, triton.next_power_of_2(n_mels), dtype=torch.float32)
    filters[:NUM_BINS, :n_mels] = mel_filters(n_mels).T
    return filters.to(device)


@triton.jit
def _log_mel_kernel(
    audio_ptr, basis_ptr, filters_ptr, out_ptr, block_max_ptr,
    num_samples, num_frames, n_mels,
    N_FFT: tl.constexpr, HOP: tl.constexpr, FLOOR: tl.constexpr,
    PADDED_TAPS: tl.constexpr, PADDED_BINS: tl.constexpr, PADDED_MELS: tl.constexpr,
    BLOCK_FRAMES: tl.constexpr, BLOCK_TAPS: tl.constexpr, BLOCK_BINS: tl.constexpr,
    DFT_PRECISION: tl.constexpr,
):
    frame_block = tl.program_id(0)
    example = tl.program_id(1).to(tl.int64)
    audio_ptr += example * num_samples
    frames = frame_block * BLOCK_FRAMES + tl.arange(0, BLOCK_FRAMES)
    frame_ok = frames < num_frames
    mels = tl.arange(0, PADDED_MELS)

    mel = tl.zeros([BLOCK_FRAMES, PADDED_MELS], dtype=tl.float32)
    for bin0 in range(0, PADDED_BINS, BLOCK_BINS):
        columns = 2 * bin0 + tl.arange(0, 2 * BLOCK_BINS)
        spectrum = tl.zeros([BLOCK_FRAMES, 2 * BLOCK_BINS], dtype=tl.float32)  # (re, im) interleaved
        for tap0 in range(0, PADDED_TAPS, BLOCK_TAPS):
            taps = tap0 + tl.arange(0, BLOCK_TAPS)
            # Sample index in the unpadded waveform of tap k of centred frame t, reflected at both ends.
            index = tl.abs(frames[:, None] * HOP - N_FFT // 2 + taps[None, :])
            index = tl.where(index >= num_samples, 2 * (num_samples - 1) - index, index)
            samples = tl.load(audio_ptr + index, mask=frame_ok[:, None] & (taps[None, :] < N_FFT), other=0.0)
            basis = tl.load(basis_ptr + taps[:, None] * (2 * PADDED_BINS) + columns[None, :])
            spectrum = tl.dot(samples, basis, spectrum, input_precision=DFT_PRECISION)
        power = tl.sum(tl.reshape(spectrum * spectrum, [BLOCK_FRAMES, BLOCK_BINS, 2]), axis=2)
        bins = bin0 + tl.arange(0, BLOCK_BINS)
        filters = tl.load(filters_ptr + bins[:, None] * PADDED_MELS + mels[None, :])
        mel = tl.dot(power, filters, mel, input_precision="tf32")

    log_mel = tl.log2(tl.maximum(mel, FLOOR)) * 0.30102999566398120  # log10(x) = log2(x) * log10(2)
    valid = frame_ok[:, None] & (mels[None, :] < n_mels)
    out = out_ptr + example * n_mels * num_frames + mels[None, :] * num_frames + frames[:, None]
    tl.store(out, log_mel, mask=valid)
    block_max = tl.max(tl.max(tl.where(valid, log_mel, float("-inf")), axis=1), axis=0)
    tl.store(block_max_ptr + example * tl.num_programs(0) + frame_block, block_max)


@triton.jit
def _normalise_kernel(
    out_ptr, block_max_ptr, values_per_example, num_blocks,
    DYNAMIC_RANGE: tl.constexpr, PADDED_NUM_BLOCKS: tl.constexpr, BLOCK: tl.constexpr,
):
    example = tl.program_id(1).to(tl.int64)
    block_ids = tl.arange(0, PADDED_NUM_BLOCKS)
    block_max = tl.load(block_max_ptr + example * num_blocks + block_ids, mask=block_ids < num_blocks,
                        other=float("-inf"))
    floor = tl.max(block_max, axis=0) - DYNAMIC_RANGE
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < values_per_example
    pointers = out_ptr + example * values_per_example + offsets
    log_mel = tl.load(pointers, mask=mask)
    tl.store(pointers, (tl.maximum(log_mel, floor) + 4.0) / 4.0, mask=mask)


def log_mel_triton(audio: torch.Tensor, n_mels: int = 80) -> torch.Tensor:
    """Fused log-mel of float32 ``audio [..., samples]`` -> ``[..., n_mels, samples // 160]``, like the reference."""
    if audio.dtype != torch.float32:
        raise ValueError(f"log_mel_triton expects float32 audio, got dtype {audio.dtype}")
    batch_shape, num_samples = audio.shape[:-1], audio.shape[-1]
    if num_samples <= N_FFT // 2:
        raise ValueError(f"audio needs more than {N_FFT // 2} samples for Whisper's reflect padding, "
                         f"got {num_samples}")
    waveforms = audio.reshape(-1, num_samples).contiguous()
    num_examples, num_frames = waveforms.shape[0], num_samples // HOP_LENGTH
    out = torch.empty(num_examples, n_mels, num_frames, device=audio.device, dtype=torch.float32)
    if num_examples == 0:
        return out.reshape(*batch_shape, n_mels, num_frames)
    num_blocks = triton.cdiv(num_frames, BLOCK_FRAMES)
    block_max = torch.empty(num_examples, num_blocks, device=audio.device, dtype=torch.float32)
    _log_mel_kernel[(num_blocks, num_examples)](
        waveforms, _windowed_dft_basis(audio.device), _padded_filterbank(n_mels, audio.device), out, block_max,
        num_samples, num_frames, n_mels,
        N_FFT=N_FFT, HOP=HOP_LENGTH, FLOOR=LOG_MEL_FLOOR,
        PADDED_TAPS=PADDED_TAPS, PADDED_BINS=PADDED_BINS, PADDED_MELS=triton.next_power_of_2(n_mels),
        BLOCK_FRAMES=BLOCK_FRAMES, BLOCK_TAPS=BLOCK_TAPS, BLOCK_BINS=BLOCK_BINS,
        DFT_PRECISION=DFT_PRECISION, num_warps=4,
    )
    values_per_example = n_mels * num_frames
    _normalise_kernel[(triton.cdiv(values_per_example, NORMALISE_BLOCK), num_examples)](
        out, block_max, values_per_example, num_blocks,
        DYNAMIC_RANGE=DYNAMIC_RANGE, PADDED_NUM_BLOCKS=triton.next_power_of_2(num_blocks), BLOCK=NORMALISE_BLOCK,
    )
    return out.reshape(*batch_shape, n_mels, num_frames)
