"""Kernel dispatch: fused Triton kernels for CUDA tensors, the torch references everywhere else.

The kernel backend that runs a call is chosen as follows. An explicit ``kernel_backend="torch"`` or
``"triton"`` argument wins. With ``"auto"``, the environment variable
``QWEN_AUDIO_KERNEL_BACKEND=torch|triton`` decides when set. Otherwise Triton runs on CUDA tensors
of a device it supports (compute capability >= 8.0, for TF32 tensor cores), and torch runs on the
rest.

Triton on CPU tensors is the Triton interpreter. It must be switched on (``TRITON_INTERPRET=1``)
before this package is imported, because ``triton.jit`` reads it when the kernels are defined. It is
for tests, not speed. Each kernel module holds its torch implementation beside the Triton one.
Neither imports the front end.
"""

from __future__ import annotations

import os

import torch

from qwen_audio.errors import InputError
from qwen_audio.kernels import mel, pool
from qwen_audio.kernels.mel import log_mel_reference, log_mel_triton
from qwen_audio.kernels.pool import (
    PoolLayerNorm,
    check_pool_layer_norm_inputs,
    pool_layer_norm_reference,
)

__all__ = [
    "KERNEL_BACKENDS",
    "KERNEL_BACKEND_ENV_VAR",
    "KernelBackendError",
    "TRITON_KERNEL_NAMES",
    "log_mel",
    "pool_layer_norm",
    "resolve_kernel_backend",
]

KERNEL_BACKENDS = ("auto", "torch", "triton")
KERNEL_BACKEND_ENV_VAR = "QWEN_AUDIO_KERNEL_BACKEND"
# What profilers name this package's kernels (benchmarks_perf/bench_train_step.py sorts step time
# by them).
TRITON_KERNEL_NAMES = tuple(
    kernel.fn.__name__
    for kernel in (
        mel._mel_epilogue_kernel,
        mel._normalise_kernel,
        pool._pool_layer_norm_forward_kernel,
        pool._pool_layer_norm_backward_kernel,
    )
)
# Read once, at import: the kernels imported above were defined as interpreted functions or not by
# this same variable.
_INTERPRETED = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on")


class KernelBackendError(InputError):
    """An unknown backend name, or ``"triton"`` asked for where Triton cannot run."""


def _triton_runs_on(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    return device.type == "cpu" and _INTERPRETED


def resolve_kernel_backend(backend: str, device: torch.device) -> str:
    """``"torch"`` or ``"triton"`` for a call on ``device``.

    The module docstring gives the rules.
    """
    if backend not in KERNEL_BACKENDS:
        raise KernelBackendError(
            f"unknown kernel backend {backend!r}; expected one of {KERNEL_BACKENDS}"
        )
    if backend == "auto":
        backend = os.environ.get(KERNEL_BACKEND_ENV_VAR, "auto")
        if backend not in KERNEL_BACKENDS:
            raise KernelBackendError(
                f"{KERNEL_BACKEND_ENV_VAR}={backend!r} is not one of {KERNEL_BACKENDS}"
            )
    if backend == "auto":
        return "triton" if device.type == "cuda" and _triton_runs_on(device) else "torch"
    if backend == "triton" and not _triton_runs_on(device):
        raise KernelBackendError(
            f"backend 'triton' cannot run on a {device} tensor: it needs a CUDA device of compute capability "
            f">= 8.0, or on CPU the Triton interpreter (TRITON_INTERPRET=1 set before importing qwen_audio.kernels)"
        )
    return backend


def log_mel(audio: torch.Tensor, n_mels: int = 80, kernel_backend: str = "auto") -> torch.Tensor:
    """Whisper's normalised log-mel of float32 ``audio [..., samples]``.

    The result is ``[..., n_mels, samples // 160]``.
    """
    if resolve_kernel_backend(kernel_backend, audio.device) == "triton":
        return log_mel_triton(audio, n_mels)
    return log_mel_reference(audio, n_mels)


def pool_layer_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float = 1e-5,
    kernel_backend: str = "auto",
) -> torch.Tensor:
    """``LayerNorm(AvgPool1d(2, 2)(x))`` over time: ``x [B, T, C]`` -> ``[B, T // 2, C]``.

    An odd last frame is dropped.
    """
    check_pool_layer_norm_inputs(x, weight, bias)
    if resolve_kernel_backend(kernel_backend, x.device) == "triton":
        return PoolLayerNorm.apply(x.contiguous(), weight.contiguous(), bias.contiguous(), eps)
    return pool_layer_norm_reference(x, weight, bias, eps)
