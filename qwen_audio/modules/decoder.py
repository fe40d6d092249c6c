"""The Qwen-7B decoder (Qwen(1) code): token embedding ``wte``, blocks ``h``, final ``ln_f``; names as released.

Positions: rotary angles follow ``position_ids`` when given (a left-padded batch passes ``cumsum(mask) - 1``);
otherwise the absolute index in the sequence, which is what the release always uses. Beyond ``seq_length`` tokens
at inference the release stretches the rotary base (dynamic NTK, factor fixed at prefill and reused while
decoding) and scales queries by ``log(p + 1) / log(seq_length)`` (logN); both are off in training, as released.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from qwen_audio.config import DecoderConfig
from qwen_audio.modules.attention import AttentionLayout, attention
from qwen_audio.modules.layers import RMSNorm, SwiGLU, apply_rotary, ntk_alpha, rotary_cos_sin


@dataclass
class KVCache:
    """Rotated keys and values ``[B, L, H, D]`` per layer, and the dynamic-NTK factor ``[B]`` chosen at prefill."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    ntk_alpha: torch.Tensor

    @property
    def length(self) -> int:
        return self.keys[0].shape[1]


class QwenAttention(nn.Module):
    """Fused ``c_attn`` (with bias) split as ``[q | k | v]``, rotary on the full head, ``c_proj`` without bias."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.n_head = config.num_attention_heads
        self.c_attn = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.c_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        layout: AttentionLayout,
        query_scale: torch.Tensor | None,
        past: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        q, k, v = self.c_attn(x).view(*x.shape[:2], 3, self.n_head, -1).unbind(2)
        q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=1), torch.cat([past[1], v], dim=1)
        if query_scale is not None:
            q = q * query_scale[:, :, None, None].to(q.dtype)
        return self.c_proj(attention(q, k, v, layout).flatten(2)), (k, v)


class QwenBlock(nn.Module):
    """``h = x + attn(ln_1(x))``; ``y = h + mlp(ln_2(h))``."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.ln_1 = RMSNorm(config.hidden_size, config.layer_norm_epsilon)
        self.attn = QwenAttention(config)
        self.ln_2 = RMSNorm(config.hidden_size, config.layer_norm_epsilon)
        self.mlp = SwiGLU(config.hidden_size, config.intermediate_size // 2)

    def forward(
        self,
        x: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        layout: AttentionLayout,
        query_scale: torch.Tensor | None,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        attn_out, present = self.attn(self.ln_1(x), rotary, layout, query_scale, past)
        x = x + attn_out
        return x + self.mlp(self.ln_2(x)), present


class QwenDecoder(nn.Module):
    """Embeddings -> blocks -> ``ln_f``. Takes input embeddings so audio can be spliced in before the blocks."""

    def __init__(self, config: DecoderConfig, attention_backend: str = "auto") -> None:
        super().__init__()
        self.config = config
        self.attention_backend = attention_backend
        self.activation_checkpointing = False
        self.wte = nn.Embedding(config.vocab_size, config.hidden_size)
        self.h = nn.ModuleList(QwenBlock(config) for _ in range(config.num_hidden_layers))
        self.ln_f = RMSNorm(config.hidden_size, config.layer_norm_epsilon)

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        use_cache: bool = False,
    ) -> tuple[torch.Tensor, KVCache | None]:
        """``inputs_embeds`` ``[B, L, D]`` -> hidden states ``[B, L, D]`` and, with ``use_cache``, the new cache.

        ``attention_mask`` ``[B, past + L]``: 0 = padding, equal non-zero ids = one sequence (packing).
        """
        batch, length = inputs_embeds.shape[:2]
        past_length = kv_cache.length if kv_cache is not None else 0
        if position_ids is None:
            positions = torch.arange(past_length, past_length + length, device=inputs_embeds.device)
            position_ids = positions.expand(batch, -1)
        elif position_ids.shape != (batch, length):
            raise ValueError(f"position_ids has shape {tuple(position_ids.shape)}, expected {(batch, length)}")
        alpha = self._ntk_alpha(batch, length, attention_mask, kv_cache, inputs_embeds.device)
        rotary = rotary_cos_sin(position_ids, self.config.kv_channels, self.config.rotary_emb_base, alpha)
        query_scale = self._logn_scale(position_ids)
        layout = AttentionLayout.build(
            attention_mask, batch_size=batch, query_length=length, key_length=past_length + length, causal=True,
            backend=self.attention_backend, device=inputs_embeds.device, dtype=inputs_embeds.dtype,
        )
        x, keys, values = inputs_embeds, [], []
        for i, block in enumerate(self.h):
            past = (kv_cache.keys[i], kv_cache.values[i]) if kv_cache is not None else None
            if self.activation_checkpointing and self.training:
                x, (k, v) = checkpoint(block, x, rotary, layout, query_scale, past, use_reentrant=False)
            else:
                x, (k, v) = block(x, rotary, layout, query_scale, past)
            keys.append(k)
            values.append(v)
        cache = KVCache(keys, values, alpha) if use_cache else None
        return self.ln_f(x), cache

    def _ntk_alpha(self, batch: int, length: int, attention_mask: torch.Tensor | None, kv_cache: KVCache | None,
                   device: torch.device) -> torch.Tensor:
        if self.training or not self.config.use_dynamic_ntk:
            return torch.ones(batch, dtype=torch.float64, device=device)
        if kv_cache is not None:
            return kv_cache.ntk_alpha
        lengths = torch.full((batch,), length, device=device)
        if attention_mask is not None and length > self.config.seq_length:
            lengths = (attention_mask > 0).sum(-1)  # the release: per-sample true lengths beyond seq_length
        return ntk_alpha(lengths, self.config.seq_length)

    def _logn_scale(self, position_ids: torch.Tensor) -> torch.Tensor | None:
        seq_length = self.config.seq_length
        if self.training or not self.config.use_logn_attn or int(position_ids.max()) + 1 <= seq_length:
            return None
        count = position_ids.float() + 1
        return torch.where(count > seq_length, torch.log(count) / math.log(seq_length), torch.ones_like(count))
