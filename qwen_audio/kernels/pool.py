"""The encoder's stride-2 average pool over time fused with the LayerNorm after it, with backward.

That LayerNorm is ``ln_post``.

Unfused, the pool writes a ``[B, T/2, C]`` tensor that the LayerNorm reads straight back. Fused,
each program reads a tile of frame pairs, averages and normalises them in fp32 registers, and writes
the normalised rows once. The backward is one pass that reads ``x`` and ``dy`` once each and writes
``dx`` once. It recomputes the pooled rows from ``x`` with the saved mean and 1/std, which is
cheaper than keeping them. It sums dweight and dbias per program in registers, leaving a few partial
rows for the caller to add. Both kernels work on 2-D tiles of several rows. A program thus keeps
several rows' loads in flight instead of walking its rows one vector at a time. Walking rows one
vector at a time gave 38 % / 21 % of copy bandwidth for forward + backward in fp32 / bf16
(measured, RESULTS.md 2026-12-04). ``pool_layer_norm_reference`` is the torch definition the
kernels must match.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

# its partial dweight/dbias add ~1/(8 * rows per tile) of a row of traffic per row
TILES_PER_BACKWARD_PROGRAM = 8


def pool_layer_norm_reference(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> torch.Tensor:
    """``LayerNorm(AvgPool1d(2, 2)(x))`` over time for channels-last ``x [B, T, C]``.

    The result is ``[B, T // 2, C]``.
    """
    pooled = F.avg_pool1d(x.transpose(1, 2), kernel_size=2, stride=2).transpose(1, 2)
    return F.layer_norm(pooled, (x.shape[-1],), weight, bias, eps)


@triton.jit
def _load_pooled_rows(x_ptr, rows, frames, pooled_frames, channels, cols, mask):
    """Pooled rows ``b * pooled_frames + t`` (means of frames 2t, 2t + 1 of example b),
    ``[ROWS, BLOCK_C]`` fp32, and frame 2t's offsets."""
    example = rows // pooled_frames
    offsets = ((example * frames + 2 * (rows % pooled_frames)).to(tl.int64) * channels)[
        :, None
    ] + cols[None, :]
    even = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    odd = tl.load(x_ptr + offsets + channels, mask=mask, other=0.0).to(tl.float32)
    return (even + odd) * 0.5, offsets


@triton.jit
def _pool_layer_norm_forward_kernel(
    x_ptr,
    weight_ptr,
    bias_ptr,
    y_ptr,
    mean_ptr,
    rstd_ptr,
    frames,
    pooled_frames,
    channels,
    rows_total,
    eps,
    ROWS: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_C)
    row_ok = rows < rows_total
    mask = row_ok[:, None] & (cols < channels)[None, :]
    pooled, _ = _load_pooled_rows(x_ptr, rows, frames, pooled_frames, channels, cols, mask)
    mean = tl.sum(pooled, axis=1) / channels
    centred = tl.where(mask, pooled - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=1) / channels + eps)
    weight = tl.load(weight_ptr + cols, mask=cols < channels).to(tl.float32)
    bias = tl.load(bias_ptr + cols, mask=cols < channels).to(tl.float32)
    y = centred * rstd[:, None] * weight[None, :] + bias[None, :]
    y_offsets = rows.to(tl.int64)[:, None] * channels + cols[None, :]
    tl.store(y_ptr + y_offsets, y.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(mean_ptr + rows, mean, mask=row_ok)
    tl.store(rstd_ptr + rows, rstd, mask=row_ok)


@triton.jit
def _pool_layer_norm_backward_kernel(
    x_ptr,
    weight_ptr,
    dy_ptr,
    mean_ptr,
    rstd_ptr,
    dx_ptr,
    dweight_ptr,
    dbias_ptr,
    frames,
    pooled_frames,
    channels,
    rows_total,
    ROWS: tl.constexpr,
    TILES: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """dx for both frames of each pair, and per-program partial sums of dweight and dbias.

    The caller sums the partial sums.
    """
    program = tl.program_id(0)
    cols = tl.arange(0, BLOCK_C)
    col_ok = cols < channels
    weight = tl.load(weight_ptr + cols, mask=col_ok).to(tl.float32)
    dweight = tl.zeros([BLOCK_C], dtype=tl.float32)
    dbias = tl.zeros([BLOCK_C], dtype=tl.float32)
    for tile in range(TILES):
        rows = (program * TILES + tile) * ROWS + tl.arange(0, ROWS)
        row_ok = rows < rows_total  # the last program's tail
        mask = row_ok[:, None] & col_ok[None, :]
        pooled, offsets = _load_pooled_rows(
            x_ptr, rows, frames, pooled_frames, channels, cols, mask
        )
        rstd = tl.load(rstd_ptr + rows, mask=row_ok, other=0.0)
        mean = tl.load(mean_ptr + rows, mask=row_ok, other=0.0)
        normalised = tl.where(mask, (pooled - mean[:, None]) * rstd[:, None], 0.0)
        dy_offsets = rows.to(tl.int64)[:, None] * channels + cols[None, :]
        dy = tl.load(dy_ptr + dy_offsets, mask=mask, other=0.0).to(tl.float32)
        dnormalised = dy * weight[None, :]
        projection = tl.sum(dnormalised * normalised, axis=1)[:, None]
        dpooled = rstd[:, None] * (
            dnormalised
            - (normalised * projection + tl.sum(dnormalised, axis=1)[:, None]) / channels
        )
        dframe = (0.5 * dpooled).to(dx_ptr.dtype.element_ty)
        tl.store(dx_ptr + offsets, dframe, mask=mask)
        tl.store(dx_ptr + offsets + channels, dframe, mask=mask)
        dweight += tl.sum(dy * normalised, axis=0)
        dbias += tl.sum(dy, axis=0)
    tl.store(dweight_ptr + program.to(tl.int64) * channels + cols, dweight, mask=col_ok)
    tl.store(dbias_ptr + program.to(tl.int64) * channels + cols, dbias, mask=col_ok)


def _tiling(channels: int, element_size: int) -> tuple[int, int, int]:
    """Whole rows in one tile: ``(rows per tile, padded channels, warps)``.

    A tile holds ~16 KiB of input (``ROWS`` frame pairs of ``C`` values), so each thread keeps ~16
    values in flight.
    """
    block = triton.next_power_of_2(channels)
    rows = max(1, min(16, 8192 // (block * element_size)))
    return rows, block, min(max(rows * block // 512, 1), 16)


class PoolLayerNorm(torch.autograd.Function):
    """Fused, differentiable ``pool_layer_norm_reference`` on contiguous inputs.

    The caller checks the inputs.
    """

    @staticmethod
    def forward(
        ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
    ) -> torch.Tensor:
        batch, frames, channels = x.shape
        pooled_frames = frames // 2
        rows = batch * pooled_frames
        y = torch.empty(batch, pooled_frames, channels, device=x.device, dtype=x.dtype)
        mean = torch.empty(rows, device=x.device, dtype=torch.float32)
        rstd = torch.empty_like(mean)
        if rows:
            tile_rows, block, warps = _tiling(channels, x.element_size())
            _pool_layer_norm_forward_kernel[(triton.cdiv(rows, tile_rows),)](
                x,
                weight,
                bias,
                y,
                mean,
                rstd,
                frames,
                pooled_frames,
                channels,
                rows,
                eps,
                ROWS=tile_rows,
                BLOCK_C=block,
                num_warps=warps,
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
        dx[:, 2 * pooled_frames :] = (
            0  # the odd last frame is dropped by the pool, so it gets no gradient
        )
        tile_rows, block, warps = _tiling(channels, x.element_size())
        programs = triton.cdiv(rows, tile_rows * TILES_PER_BACKWARD_PROGRAM)
        dweight = torch.empty(
            programs, channels, device=x.device, dtype=torch.float32
        )  # per-program partials
        dbias = torch.empty_like(dweight)
        if rows:
            _pool_layer_norm_backward_kernel[(programs,)](
                x,
                weight,
                dy.contiguous(),
                mean,
                rstd,
                dx,
                dweight,
                dbias,
                frames,
                pooled_frames,
                channels,
                rows,
                ROWS=tile_rows,
                TILES=TILES_PER_BACKWARD_PROGRAM,
                BLOCK_C=block,
                num_warps=warps,
            )
        return dx, dweight.sum(0).to(weight.dtype), dbias.sum(0).to(weight.dtype), None


def check_pool_layer_norm_inputs(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Raise ValueError unless ``x`` is ``[B, T >= 2, C]`` and ``weight``, ``bias`` are ``[C]``."""
    if x.dim() != 3 or x.shape[1] < 2:
        raise ValueError(f"x must be [batch, frames >= 2, channels], got shape {tuple(x.shape)}")
    channels = x.shape[-1]
    for name, param in (("weight", weight), ("bias", bias)):
        if param.shape != (channels,):
            raise ValueError(
                f"{name} must have shape ({channels},) to match x's channels, got {tuple(param.shape)}"
            )
