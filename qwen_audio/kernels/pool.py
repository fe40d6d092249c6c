"""The encoder's stride-2 average pool over time fused with the LayerNorm after it (``ln_post``), with backward.

Unfused, the pool writes a ``[B, T/2, C]`` tensor that the LayerNorm reads straight back; fused, each program
reads one pair of frames, averages and normalises them in fp32 registers, and writes the normalised row once.
The backward recomputes the pooled row from ``x`` (cheaper than keeping it) with the saved mean and 1/std.
``pool_layer_norm_reference`` is the torch definition the kernels must match.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

BACKWARD_ROWS_PER_PROGRAM = 32  # rows per program; its partial dweight/dbias add ~1/32 of a row of traffic per row


def pool_layer_norm_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """``LayerNorm(AvgPool1d(2, 2)(x))`` over time for channels-last ``x [B, T, C]``: ``[B, T // 2, C]``."""
    pooled = F.avg_pool1d(x.transpose(1, 2), kernel_size=2, stride=2).transpose(1, 2)
    return F.layer_norm(pooled, (x.shape[-1],), weight, bias, eps)


@triton.jit
def _load_pooled_row(x_ptr, row, frames, pooled_frames, channels, cols, mask):
    """Pooled row ``row = b * pooled_frames + t`` (mean of frames 2t, 2t + 1 of example b) and frame 2t's offsets."""
    example = row // pooled_frames
    offsets = (example * frames + 2 * (row % pooled_frames)).to(tl.int64) * channels + cols
    even = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    odd = tl.load(x_ptr + offsets + channels, mask=mask, other=0.0).to(tl.float32)
    return (even + odd) * 0.5, offsets


@triton.jit
def _pool_layer_norm_forward_kernel(
    x_ptr, weight_ptr, bias_ptr, y_ptr, mean_ptr, rstd_ptr,
    frames, pooled_frames, channels, eps,
    BLOCK_C: tl.constexpr,
):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK_C)
    mask = cols < channels
    pooled, _ = _load_pooled_row(x_ptr, row, frames, pooled_frames, channels, cols, mask)
    mean = tl.sum(pooled, axis=0) / channels
    centred = tl.where(mask, pooled - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=0) / channels + eps)
    weight = tl.load(weight_ptr + cols, mask=mask).to(tl.float32)
    bias = tl.load(bias_ptr + cols, mask=mask).to(tl.float32)
    y = centred * rstd * weight + bias
    tl.store(y_ptr + row.to(tl.int64) * channels + cols, y.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(mean_ptr + row, mean)
    tl.store(rstd_ptr + row, rstd)


@triton.jit
def _pool_layer_norm_backward_kernel(
    x_ptr, weight_ptr, dy_ptr, mean_ptr, rstd_ptr, dx_ptr, dweight_ptr, dbias_ptr,
    frames, pooled_frames, channels, rows,
    ROWS_PER_PROGRAM: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """dx for both frames of each pair; per-program partial sums of dweight and dbias (summed by the caller)."""
    program = tl.program_id(0)
    cols = tl.arange(0, BLOCK_C)
    mask = cols < channels
    weight = tl.load(weight_ptr + cols, mask=mask).to(tl.float32)
    dweight = tl.zeros([BLOCK_C], dtype=tl.float32)
    dbias = tl.zeros([BLOCK_C], dtype=tl.float32)
    first_row = program.to(tl.int64) * ROWS_PER_PROGRAM
    for step in range(ROWS_PER_PROGRAM):
        row = first_row + step
        row_mask = mask & (row < rows)  # the last program's tail
        pooled, offsets = _load_pooled_row(x_ptr, row, frames, pooled_frames, channels, cols, row_mask)
        rstd = tl.load(rstd_ptr + row, mask=row < rows, other=0.0)
        normalised = tl.where(row_mask, (pooled - tl.load(mean_ptr + row, mask=row < rows, other=0.0)) * rstd, 0.0)
        dy = tl.load(dy_ptr + row * channels + cols, mask=row_mask, other=0.0).to(tl.float32)
        dnormalised = dy * weight
        dpooled = rstd * (dnormalised - (normalised * tl.sum(dnormalised * normalised, axis=0)
                                         + tl.sum(dnormalised, axis=0)) / channels)
        dframe = (0.5 * dpooled).to(dx_ptr.dtype.element_ty)
        tl.store(dx_ptr + offsets, dframe, mask=row_mask)
        tl.store(dx_ptr + offsets + channels, dframe, mask=row_mask)
        dweight += dy * normalised
        dbias += dy
    tl.store(dweight_ptr + program.to(tl.int64) * channels + cols, dweight, mask=mask)
    tl.store(dbias_ptr + program.to(tl.int64) * channels + cols, dbias, mask=mask)


def _channel_block(channels: int) -> tuple[int, int]:
    """Whole row in one block; warps grow with the row so each thread keeps a few values in registers."""
    block = triton.next_power_of_2(channels)
    return block, min(max(block // 256, 1), 16)


class PoolLayerNorm(torch.autograd.Function):
    """Fused, differentiable ``pool_layer_norm_reference`` on contiguous inputs checked by the caller."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
        batch, frames, channels = x.shape
        pooled_frames = frames // 2
        rows = batch * pooled_frames
        y = torch.empty(batch, pooled_frames, channels, device=x.device, dtype=x.dtype)
        mean = torch.empty(rows, device=x.device, dtype=torch.float32)
        rstd = torch.empty_like(mean)
        if rows:
            block, warps = _channel_block(channels)
            _pool_layer_norm_forward_kernel[(rows,)](
                x, weight, bias, y, mean, rstd, frames, pooled_frames, channels, eps,
                BLOCK_C=block, num_warps=warps,
            )
        ctx.save_for_backward(x, weight, mean, rstd)
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None]:
        x, weight, mean, rstd = ctx.saved_tensors
        batch, frames, channels = x.shape
        pooled_frames = frames // 2
        rows = batch * pooled_frames
        dx = torch.empty_like(x)
        dx[:, 2 * pooled_frames:] = 0  # the odd last frame is dropped by the pool, so it gets no gradient
        programs = triton.cdiv(rows, BACKWARD_ROWS_PER_PROGRAM)
        dweight = torch.empty(programs, channels, device=x.device, dtype=torch.float32)  # per-program partials
        dbias = torch.empty_like(dweight)
        if rows:
            block, warps = _channel_block(channels)
            _pool_layer_norm_backward_kernel[(programs,)](
                x, weight, dy.contiguous(), mean, rstd, dx, dweight, dbias, frames, pooled_frames, channels, rows,
                ROWS_PER_PROGRAM=BACKWARD_ROWS_PER_PROGRAM, BLOCK_C=block, num_warps=warps,
            )
        return dx, dweight.sum(0).to(weight.dtype), dbias.sum(0).to(weight.dtype), None


def check_pool_layer_norm_inputs(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Raise ValueError unless ``x`` is ``[B, T >= 2, C]`` and ``weight``, ``bias`` are ``[C]``."""
    if x.dim() != 3 or x.shape[1] < 2:
        raise ValueError(f"x must be [batch, frames >= 2, channels], got shape {tuple(x.shape)}")
    channels = x.shape[-1]
    for name, param in (("weight", weight), ("bias", bias)):
        if param.shape != (channels,):
            raise ValueError(f"{name} must have shape ({channels},) to match x's channels, got {tuple(param.shape)}")
