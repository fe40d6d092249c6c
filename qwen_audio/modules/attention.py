"""Scaled dot-product attention over padded or packed batches, with interchangeable backends.

Who attends to whom is described once per forward by ``segment_ids`` ``[B, Lk]``. An id of 0 marks
padding. A run of equal non-zero ids in a row is one sequence. A plain 0/1 attention mask is the
one-sequence case, and ids 1, 2, 3... pack several sequences in a row. Queries are the last ``Lq``
key positions (``Lq < Lk`` when decoding with a KV cache). A causal mask is aligned bottom-right, as
in FlashAttention.

The backends give the same result up to kernel rounding.

``sdpa``
    ``F.scaled_dot_product_attention`` with a boolean mask, on any device and dtype.
``varlen``
    ``torch.nn.attention.varlen.varlen_attn`` on the packed valid tokens (CUDA, fp16/bf16).
``flash_attn``
    FlashAttention-4's ``flash_attn.cute.flash_attn_varlen_func`` (the ``flash-attn-4`` wheel, the
    ``cuda`` extra). It needs CUDA of compute capability >= 9.0 (Hopper and Blackwell) and
    fp16/bf16.

The varlen backends never touch padded positions, so padding and packing cost no attention compute.
``auto`` picks flash_attn where FlashAttention-4 is installed and the device is SM90+, then varlen
on other CUDA devices (fp16/bf16), else sdpa. Padded query rows come out as zeros.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from qwen_audio.config import ATTENTION_BACKENDS

# FlashAttention-4 has kernels for SM90 (Hopper) and SM100+ (Blackwell)
FLASH_ATTN_MIN_CAPABILITY = (9, 0)


def _flash_attn_available() -> bool:
    """Whether FlashAttention-4's ``flash_attn.cute`` is installed.

    flash-attn 2 alone does not count."""
    try:
        return importlib.util.find_spec("flash_attn.cute") is not None
    except ModuleNotFoundError:  # no flash_attn package at all
        return False


def _cuda_capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)


def resolve_attention_backend(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    """The concrete backend for ``backend`` on this device and dtype.

    A forced backend that cannot run is an error."""
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(
            f"attention backend {backend!r} is not one of {', '.join(ATTENTION_BACKENDS)}"
        )
    fused_ok = device.type == "cuda" and dtype in (torch.float16, torch.bfloat16)
    if backend == "auto":
        if (
            fused_ok
            and _flash_attn_available()
            and _cuda_capability(device) >= FLASH_ATTN_MIN_CAPABILITY
        ):
            return "flash_attn"
        return "varlen" if fused_ok else "sdpa"
    if backend in ("varlen", "flash_attn"):
        if not fused_ok:
            raise ValueError(
                f"attention backend {backend!r} needs CUDA tensors in fp16/bf16, got {device.type} {dtype}"
            )
    if backend == "flash_attn":
        if not _flash_attn_available():
            raise ValueError(
                "attention backend 'flash_attn' needs FlashAttention-4 "
                "(pip install 'qwen-audio[cuda]', which installs flash-attn-4)"
            )
        capability = _cuda_capability(device)
        if capability < FLASH_ATTN_MIN_CAPABILITY:
            raise ValueError(
                "attention backend 'flash_attn' (FlashAttention-4) needs compute capability "
                ">= 9.0, "
                f"{device} has {capability[0]}.{capability[1]}; use 'varlen'"
            )
    return backend


def _run_ids(segment_ids: torch.Tensor) -> torch.Tensor:
    """Number every maximal run of equal non-zero ids, batch-wide in row-major order.

    Padding gets -1."""
    valid = segment_ids > 0
    starts = valid.clone()
    starts[:, 1:] &= segment_ids[:, 1:] != segment_ids[:, :-1]
    runs = starts.flatten().cumsum(0).view_as(segment_ids) - 1
    return runs.masked_fill(~valid, -1)


@dataclass
class AttentionLayout:
    """Which query attends to which key, prepared once per forward for one backend.

    All layers share it.
    """

    backend: str
    causal: bool
    query_length: int
    key_length: int
    query_valid: torch.Tensor | None = None  # [B, Lq] bool; None: no padding
    sdpa_mask: torch.Tensor | None = None  # [B, 1, Lq, Lk] bool
    query_index: torch.Tensor | None = (
        None  # varlen: positions of valid queries in the flattened [B * Lq]
    )
    key_index: torch.Tensor | None = (
        None  # varlen: positions of the keys they see in the flattened [B * Lk]
    )
    cu_seqlens_q: torch.Tensor | None = None
    cu_seqlens_k: torch.Tensor | None = None
    max_seqlen_q: int = 0
    max_seqlen_k: int = 0

    @classmethod
    def build(
        cls,
        segment_ids: torch.Tensor | None,
        *,
        batch_size: int,
        query_length: int,
        key_length: int,
        causal: bool,
        backend: str,
        device: torch.device,
        dtype: torch.dtype,
    ) -> AttentionLayout:
        backend = resolve_attention_backend(backend, device, dtype)
        if segment_ids is not None and segment_ids.shape != (batch_size, key_length):
            raise ValueError(
                f"attention mask has shape {tuple(segment_ids.shape)}, expected (batch, key length) = "
                f"({batch_size}, {key_length}) (past tokens included)"
            )
        if query_length > key_length:
            raise ValueError(f"query length {query_length} exceeds key length {key_length}")
        layout = cls(backend, causal, query_length, key_length)
        if segment_ids is None and query_length == key_length and backend == "sdpa":
            return layout  # plain (causal) attention: SDPA may pick its own fused kernel
        if segment_ids is None:
            segment_ids = torch.ones(batch_size, key_length, dtype=torch.long, device=device)
        runs = _run_ids(segment_ids.to(device))
        query_runs = runs[:, key_length - query_length :]
        layout.query_valid = query_runs >= 0
        if backend == "sdpa":
            layout.sdpa_mask = cls._dense_mask(runs, query_runs, causal)
        else:
            layout._pack(runs, query_runs)
        return layout

    @staticmethod
    def _dense_mask(runs: torch.Tensor, query_runs: torch.Tensor, causal: bool) -> torch.Tensor:
        key_length, query_length = runs.shape[1], query_runs.shape[1]
        allowed = (query_runs[:, :, None] == runs[:, None, :]) & (runs[:, None, :] >= 0)
        key_pos = torch.arange(key_length, device=runs.device)
        query_pos = torch.arange(key_length - query_length, key_length, device=runs.device)
        if causal:
            allowed &= key_pos[None, None, :] <= query_pos[None, :, None]
        # A padded query sees only itself, so no row is empty (an empty softmax row gives NaN, also
        # in backward).
        own = (key_pos[None, :] == query_pos[:, None])[None] & (query_runs < 0)[:, :, None]
        return (allowed | own)[:, None]

    def _pack(self, runs: torch.Tensor, query_runs: torch.Tensor) -> None:
        flat_runs, flat_query_runs = runs.flatten(), query_runs.flatten()
        key_index = (flat_runs >= 0).nonzero().squeeze(1)
        query_index = (flat_query_runs >= 0).nonzero().squeeze(1)
        n_runs = int(runs.max()) + 1
        key_runs, q_runs = flat_runs[key_index], flat_query_runs[query_index]
        key_lengths = torch.bincount(key_runs, minlength=n_runs)
        query_lengths = torch.bincount(q_runs, minlength=n_runs)
        has_query = query_lengths > 0  # a sequence entirely in the KV cache produces no output
        self.key_index = key_index[has_query[key_runs]]
        self.query_index = query_index
        self.cu_seqlens_q = F.pad(query_lengths[has_query].cumsum(0), (1, 0)).int()
        self.cu_seqlens_k = F.pad(key_lengths[has_query].cumsum(0), (1, 0)).int()
        self.max_seqlen_q = int(query_lengths.max()) if n_runs else 0
        self.max_seqlen_k = int(key_lengths[has_query].max()) if bool(has_query.any()) else 0


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: AttentionLayout,
    scale: float | None = None,
) -> torch.Tensor:
    """Attention of ``q`` ``[B, Lq, H, D]`` over ``k, v`` ``[B, Lk, H, D]``.

    Returns ``[B, Lq, H, D]``.
    """
    if layout.backend == "sdpa":
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            attn_mask=layout.sdpa_mask,
            is_causal=layout.causal and layout.sdpa_mask is None,
            scale=scale,
        ).transpose(1, 2)
    else:
        out = _varlen(q, k, v, layout, scale)
    if layout.query_valid is not None:
        out = out * layout.query_valid[:, :, None, None].to(out.dtype)
    return out


def _varlen(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: AttentionLayout, scale: float | None
) -> torch.Tensor:
    batch, query_length, heads, dim = q.shape
    packed_q = q.reshape(-1, heads, dim)[layout.query_index]
    packed_k = k.reshape(-1, heads, dim)[layout.key_index]
    packed_v = v.reshape(-1, heads, dim)[layout.key_index]
    args = (
        packed_q,
        packed_k,
        packed_v,
        layout.cu_seqlens_q,
        layout.cu_seqlens_k,
        layout.max_seqlen_q,
        layout.max_seqlen_k,
    )
    if layout.backend == "flash_attn":
        from flash_attn.cute import flash_attn_varlen_func

        # (out, lse)
        packed, _ = flash_attn_varlen_func(*args, softmax_scale=scale, causal=layout.causal)
    else:
        from torch.nn.attention.varlen import varlen_attn

        packed = varlen_attn(*args, scale=scale, window_size=(-1, 0) if layout.causal else (-1, -1))
    out = q.new_zeros(batch * query_length, heads, dim)
    return out.index_copy(0, layout.query_index, packed).view(batch, query_length, heads, dim)
