"""Small layers shared by the encoder and the decoder, written as the release computes them.

The encoder uses ``torch.nn.LayerNorm`` as is: the release removed Whisper's fp32 upcast, so
LayerNorm runs in the working dtype, which is exactly what ``nn.LayerNorm`` does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """Qwen's RMSNorm: normalise in fp32, cast back to the input dtype, then scale (no bias)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """Whisper's fixed positional table ``[length, channels]``.

    It is ``[sin | cos]`` halves, not interleaved.
    """
    if channels % 2:
        raise ValueError(f"sinusoid channels must be even, got {channels}")
    log_timescale_increment = math.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = torch.exp(-log_timescale_increment * torch.arange(channels // 2))
    scaled_time = torch.arange(length)[:, None] * inv_timescales[None, :]
    return torch.cat([torch.sin(scaled_time), torch.cos(scaled_time)], dim=1)


def ntk_alpha(lengths: torch.Tensor, seq_length: int) -> torch.Tensor:
    """Dynamic-NTK factor of the release, per sequence length.

    It is ``max(2**ceil(log2(L / seq_length) + 1) - 1, 1)``.
    """
    context = torch.log2(lengths.double() / seq_length) + 1
    return torch.clamp(2 ** torch.ceil(context) - 1, min=1)


def rotary_cos_sin(
    positions: torch.Tensor, head_dim: int, base: float, alpha: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 ``cos, sin`` ``[B, L, 1, head_dim]`` for rotate-half RoPE at ``positions`` ``[B, L]``.

    ``alpha`` ``[B]`` is the dynamic-NTK factor per sequence: the base grows to
    ``base * alpha**(d / (d - 2))``.
    """
    exponents = (
        torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float64) / head_dim
    )
    bases = torch.full(
        (positions.shape[0],), float(base), device=positions.device, dtype=torch.float64
    )
    if alpha is not None:
        bases = bases * alpha.to(bases) ** (head_dim / (head_dim - 2))
    inv_freq = (1.0 / bases[:, None] ** exponents).float()  # [B, head_dim / 2]
    freqs = positions.float()[:, :, None] * inv_freq[:, None, :]
    emb = torch.cat([freqs, freqs], dim=-1)[:, :, None, :]
    return emb.cos(), emb.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``[B, L, H, D]`` in fp32 (rotate-half convention) and cast back."""
    x32 = x.float()
    x1, x2 = x32.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x32 * cos + rotated * sin).type_as(x)


class SwiGLU(nn.Module):
    """Qwen's MLP with the released gate order: ``c_proj(w1(x) * silu(w2(x)))`` (w2 is the gate)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(dim, hidden, bias=False)
        self.c_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.w1(x) * F.silu(self.w2(x)))
