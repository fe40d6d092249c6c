"""Triton kernels against their torch references (log-mel: ``log_mel_reference``, itself equal to
openai-whisper; pool + LayerNorm: float64 ``AvgPool1d(2, 2)`` then ``layer_norm``), plus the backend
dispatch rules.

``triton.jit`` decides when a kernel is *defined* whether it is interpreted, so the CPU checks
cannot switch the interpreter on inside a pytest process that may already have imported the kernels.
``test_interpreter_run`` reruns this file's ``interpreted`` tests in a subprocess started with
``TRITON_INTERPRET=1`` (tiny shapes); ``TRITON_INTERPRET=1 pytest tests/test_kernels.py`` runs them
directly. CUDA tests use realistic shapes. Every tensor the kernel wrappers allocate starts as NaN,
so an element a kernel fails to write fails the test.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys

import pytest
import torch

from qwen_audio.audio import SAMPLE_RATE, log_mel_spectrogram
from qwen_audio.kernels import (
    KERNEL_BACKEND_ENV_VAR,
    KernelBackendError,
    log_mel,
    pool_layer_norm,
    resolve_kernel_backend,
)
from qwen_audio.kernels.mel import log_mel_reference
from qwen_audio.lengths import N_SAMPLES

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
interpreted = pytest.mark.skipif(
    not INTERPRETED, reason="run by test_interpreter_run under TRITON_INTERPRET=1"
)
not_interpreted = pytest.mark.skipif(
    INTERPRETED, reason="assumes kernels compiled for a GPU, not interpreted"
)


@pytest.fixture
def poisoned_allocations(monkeypatch):
    """Make ``torch.empty`` / ``torch.empty_like`` return NaN-filled tensors.

    This lasts while a kernel wrapper runs.
    """

    def poisoned(allocate):
        def allocate_nan(*args, **kwargs):
            tensor = allocate(*args, **kwargs)
            return tensor.fill_(math.nan) if tensor.is_floating_point() else tensor

        return allocate_nan

    monkeypatch.setattr(torch, "empty", poisoned(torch.empty))
    monkeypatch.setattr(torch, "empty_like", poisoned(torch.empty_like))


def speech_like(batch: int, num_samples: int, seed: int) -> torch.Tensor:
    """Voiced harmonics and noise under a syllable-rate envelope, a chirp and near-silent gaps.

    Each clip has its own gain. Covers the DFT's hard case: power spanning ~8 decades within a clip,
    and clips whose peaks differ by 10^4.
    """
    generator = torch.Generator().manual_seed(seed)
    t = torch.arange(num_samples, dtype=torch.float64) / SAMPLE_RATE
    clips = []
    for index in range(batch):
        pitch = 100 + 60 * torch.rand((), generator=generator, dtype=torch.float64)
        voice = sum(torch.sin(2 * math.pi * pitch * k * t) / k for k in range(1, 25))
        noise = torch.randn(num_samples, generator=generator, dtype=torch.float64)
        envelope = 0.5 * (1 + torch.sin(2 * math.pi * 4 * t + index)) * (t % 0.7 < 0.5)
        chirp = torch.sin(2 * math.pi * (80 * t + 2000 * t**2))
        clip = (
            envelope * (0.05 * voice + 0.02 * noise) + 0.01 * chirp * (t % 1.1 > 0.8) + 1e-5 * noise
        )
        clips.append(clip * 10.0 ** -(2 * index % 5))
    return torch.stack(clips).float()


def pool_case(batch: int, frames: int, channels: int, seed: int) -> tuple[torch.Tensor, ...]:
    """float64 x [B, T, C], LayerNorm params and dy.

    Example b of x is zero past its length (a padded batch).
    """
    generator = torch.Generator().manual_seed(seed)
    x = 3 * torch.randn(batch, frames, channels, generator=generator, dtype=torch.float64) + 1
    lengths = torch.linspace(frames, 2, batch).long()
    x[torch.arange(frames)[None, :] >= lengths[:, None]] = 0
    weight = 1 + 0.5 * torch.randn(channels, generator=generator, dtype=torch.float64)
    bias = torch.randn(channels, generator=generator, dtype=torch.float64)
    dy = torch.randn(batch, frames // 2, channels, generator=generator, dtype=torch.float64)
    return x, weight, bias, dy


def float64_pool_layer_norm(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """Independent formula: mean of frame pairs, then LayerNorm with eps 1e-5.

    An odd last frame is dropped.
    """
    pairs = x[:, : x.shape[1] // 2 * 2].reshape(x.shape[0], -1, 2, x.shape[2]).mean(dim=2)
    mean = pairs.mean(-1, keepdim=True)
    var = pairs.var(-1, unbiased=False, keepdim=True)
    return (pairs - mean) / torch.sqrt(var + 1e-5) * weight + bias


def check_log_mel(audio: torch.Tensor, device: str, n_mels: int = 80) -> float:
    expected = log_mel_reference(audio, n_mels)
    actual = log_mel(audio.to(device), n_mels, kernel_backend="triton").cpu()
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-3)
    return (actual - expected).abs().max().item()


TOLERANCE = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.bfloat16: dict(rtol=2e-2, atol=3e-2)}


def check_pool_layer_norm(
    batch: int, frames: int, channels: int, dtype: torch.dtype, device: str
) -> None:
    # Rounded to dtype first, so the float64 truth sees the kernel's inputs and only the kernel's
    # own error counts.
    x, weight, bias, dy = (
        t.to(dtype) for t in pool_case(batch, frames, channels, seed=frames * channels)
    )
    leaves = [t.to(device).requires_grad_() for t in (x, weight, bias)]
    y = pool_layer_norm(*leaves, 1e-5, kernel_backend="triton")
    y.backward(dy.to(device))
    truth = [t.detach().double().requires_grad_() for t in (x, weight, bias)]
    expected = float64_pool_layer_norm(*truth)
    expected.backward(dy.double())
    assert y.dtype == dtype and leaves[0].grad.dtype == dtype
    torch.testing.assert_close(y.double().cpu(), expected.detach(), **TOLERANCE[dtype])
    for name, leaf, reference in zip(("dx", "dweight", "dbias"), leaves, truth, strict=True):
        # weight/bias gradients sum over all rows: compare them relative to their size.
        scale = reference.grad.abs().max().item() if name != "dx" else 1.0
        torch.testing.assert_close(
            leaf.grad.double().cpu() / scale,
            reference.grad / scale,
            **TOLERANCE[dtype],
            msg=lambda m, name=name: f"{name}: {m}",
        )


# ---- run on CPU through the Triton interpreter
# -------------------------------------------------------------


def test_interpreter_run():
    if INTERPRETED:
        pytest.skip("this is the interpreted run")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            __file__,
            "-k",
            "interpreted",
            "-m",
            "not cuda",
        ],
        env={**os.environ, "TRITON_INTERPRET": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    outcomes = {word: int(count) for count, word in re.findall(r"(\d+) (\w+)", summary)}
    # every selected interpreted case ran and passed: nothing skipped, failed, errored or xfailed
    allowed = {"passed", "deselected", "warning", "warnings"}
    assert outcomes.get("passed", 0) >= 10 and set(outcomes) <= allowed, summary


@interpreted
@pytest.mark.parametrize(
    "num_samples", [201, 20_837, 2 * 64 * 160]
)  # shortest legal, odd, exact frame blocks
def test_interpreted_log_mel_matches_reference(num_samples, poisoned_allocations):
    check_log_mel(speech_like(3, num_samples, seed=num_samples), "cpu")


@interpreted
def test_interpreted_128_bin_log_mel_matches_reference_and_transformers(poisoned_allocations):
    """Qwen2-Audio's front end: the kernel with 128 bins against two references.

    They are the torch reference and WhisperFeatureExtractor.
    """
    from transformers import WhisperFeatureExtractor

    audio = speech_like(2, 20_837, seed=128)
    hf = WhisperFeatureExtractor(feature_size=128)(
        list(audio.numpy()), sampling_rate=SAMPLE_RATE, padding="longest", return_tensors="pt"
    ).input_features
    torch.testing.assert_close(log_mel_reference(audio, 128), hf, rtol=0, atol=1e-5)
    torch.testing.assert_close(log_mel(audio, 128, kernel_backend="triton"), hf, rtol=0, atol=1e-5)


@interpreted
def test_interpreted_log_mel_keeps_batch_shape_and_example_independence(poisoned_allocations):
    audio = speech_like(4, 8000, seed=1).reshape(2, 2, 8000)
    batched = log_mel(audio, 80, kernel_backend="triton")
    alone = log_mel(audio[1, 0], 80, kernel_backend="triton")
    assert batched.shape == (2, 2, 80, 50)
    torch.testing.assert_close(batched[1, 0], alone, rtol=0, atol=1e-6)


@interpreted
def test_interpreted_log_mel_spectrogram_routes_triton(poisoned_allocations):
    audio = speech_like(1, 4000, seed=2)
    torch.testing.assert_close(
        log_mel_spectrogram(audio, kernel_backend="triton"),
        log_mel_reference(audio, 80),
        rtol=0,
        atol=1e-3,
    )


@interpreted
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
# Odd T and a non-power-of-2 C; 130 pooled rows span two backward programs of 8 tiles of 16 rows,
# the last partial.
# 300 channels: tiles of 4 (fp32) or 8 (bf16) rows, padded to 512 columns.
@pytest.mark.parametrize("batch,frames,channels", [(3, 9, 48), (2, 130, 80), (2, 41, 300)])
def test_interpreted_pool_layer_norm_matches_float64(
    batch, frames, channels, dtype, poisoned_allocations
):
    check_pool_layer_norm(batch, frames, channels, dtype, "cpu")


# ---- dispatch (no kernel runs)
# -------------------------------------------------------------------------------


@not_interpreted
def test_auto_picks_torch_on_cpu_and_triton_on_cpu_is_a_clear_error(monkeypatch):
    monkeypatch.delenv(KERNEL_BACKEND_ENV_VAR, raising=False)
    cpu = torch.device("cpu")
    assert resolve_kernel_backend("auto", cpu) == "torch"
    with pytest.raises(KernelBackendError, match="TRITON_INTERPRET"):
        log_mel_spectrogram(torch.zeros(1600), kernel_backend="triton")
    monkeypatch.setenv(KERNEL_BACKEND_ENV_VAR, "triton")
    with pytest.raises(KernelBackendError, match="cpu"):
        resolve_kernel_backend("auto", cpu)
    assert resolve_kernel_backend("torch", cpu) == "torch"  # the argument beats the environment


def test_backend_names_are_checked(monkeypatch):
    with pytest.raises(KernelBackendError, match="cuda-magic"):
        resolve_kernel_backend("cuda-magic", torch.device("cpu"))
    monkeypatch.setenv(KERNEL_BACKEND_ENV_VAR, "fast")
    with pytest.raises(KernelBackendError, match=f"{KERNEL_BACKEND_ENV_VAR}='fast'"):
        resolve_kernel_backend("auto", torch.device("cpu"))
    monkeypatch.setenv(KERNEL_BACKEND_ENV_VAR, "torch")
    assert resolve_kernel_backend("auto", torch.device("cpu")) == "torch"


@pytest.mark.parametrize(
    "shape,param_shape,field",
    [((4, 16), (16,), "x"), ((2, 1, 16), (16,), "x"), ((2, 4, 16), (8,), "weight")],
)
def test_pool_layer_norm_rejects_bad_shapes(shape, param_shape, field):
    with pytest.raises(ValueError, match=field):
        pool_layer_norm(torch.zeros(shape), torch.ones(param_shape), torch.zeros(16))


def test_torch_backend_matches_float64_formula():
    x, weight, bias, _ = pool_case(2, 7, 24, seed=0)
    torch.testing.assert_close(
        pool_layer_norm(x, weight, bias, 1e-5, kernel_backend="torch"),
        float64_pool_layer_norm(x, weight, bias),
    )


# ---- CUDA, realistic shapes
# ----------------------------------------------------------------------------------


@pytest.mark.cuda
def test_cuda_log_mel_on_30s_clips_matches_reference(poisoned_allocations):
    check_log_mel(speech_like(6, N_SAMPLES, seed=30), "cuda")
    check_log_mel(speech_like(3, 7 * SAMPLE_RATE + 123, seed=7), "cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("frames", [1500, 1499])
def test_cuda_pool_layer_norm_matches_float64(frames, dtype, poisoned_allocations):
    check_pool_layer_norm(8, frames, 1280, dtype, "cuda")


@pytest.mark.cuda
def test_cuda_auto_picks_triton(monkeypatch):
    monkeypatch.delenv(KERNEL_BACKEND_ENV_VAR, raising=False)
    assert resolve_kernel_backend("auto", torch.device("cuda")) == "triton"
    monkeypatch.setenv(KERNEL_BACKEND_ENV_VAR, "torch")
    assert resolve_kernel_backend("auto", torch.device("cuda")) == "torch"
