"""The Qwen-7B decoder (Qwen(1) code): token embedding ``wte``, blocks ``h``, final ``ln_f``.

These names are as released. Rotary angles follow ``position_ids`` when given. A left-padded batch
passes ``cumsum(mask) - 1``. Otherwise they follow the absolute index in the sequence, which the
release always uses. Generation decodes over a :class:`KVCache` preallocated once and written in
place, one slot per sequence.

Beyond ``seq_length`` tokens at inference, the release stretches the rotary base (dynamic NTK). The
NTK factor is fixed at prefill and reused while decoding. The release also scales queries by
``log(p + 1) / log(seq_length)`` (logN). Both are off in training, as released.
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
    """Rotated keys and values ``[slots, max_length + 1, H, D]`` per layer.

    They are preallocated and written in place. A slot holds one sequence from index 0 without
    padding. ``lengths`` ``[slots]`` counts its tokens. ``ntk_alpha`` ``[slots]`` holds the
    dynamic-NTK factor chosen at its prefill (as the release keeps it while decoding). The extra
    last index is scratch. Left padding is written there, so a padded prefill needs no host-side
    indexing.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    lengths: torch.Tensor
    ntk_alpha: torch.Tensor

    @classmethod
    def allocate(
        cls,
        config: DecoderConfig,
        slots: int,
        max_length: int,
        *,
        device: torch.device | str,
        dtype: torch.dtype,
    ) -> KVCache:
        """An empty cache of ``slots`` sequences of at most ``max_length`` tokens each."""
        shape = (slots, max_length + 1, config.num_attention_heads, config.kv_channels)
        layers = config.num_hidden_layers
        return cls(
            [torch.zeros(shape, device=device, dtype=dtype) for _ in range(layers)],
            [torch.zeros(shape, device=device, dtype=dtype) for _ in range(layers)],
            torch.zeros(slots, dtype=torch.long, device=device),
            torch.ones(slots, dtype=torch.float64, device=device),
        )

    @property
    def max_length(self) -> int:
        return self.keys[0].shape[1] - 1

    def reset(self, slots: torch.Tensor) -> None:
        """Empty ``slots`` (their old entries are overwritten by the next prefill)."""
        self.lengths[slots] = 0


@dataclass
class CacheWrite:
    """Where one forward's new tokens go in a :class:`KVCache`.

    It is prepared once and shared by all layers.
    """

    cache: KVCache
    slots: torch.Tensor | None  # [B] slot of each row; None: slots 0..B-1 (views, no gather)
    index: tuple[torch.Tensor, torch.Tensor]  # (slot, position) of each new token, [B, L] each
    key_length: int  # keys attended: the first key_length positions of each slot

    def write(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new ``k, v`` ``[B, L, H, D]`` of ``layer``.

        Returns the keys and values its rows attend to.
        """
        keys, values = self.cache.keys[layer], self.cache.values[layer]
        keys.index_put_(self.index, k)
        values.index_put_(self.index, v)
        if self.slots is None:
            batch = k.shape[0]
            return keys[:batch, : self.key_length], values[:batch, : self.key_length]
        return keys[self.slots, : self.key_length], values[self.slots, : self.key_length]


class QwenAttention(nn.Module):
    """Fused ``c_attn`` (with bias) split as ``[q | k | v]``, and ``c_proj`` without bias.

    Rotary applies to the full head.
    """

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
        cache: tuple[CacheWrite, int] | None,
    ) -> torch.Tensor:
        q, k, v = self.c_attn(x).view(*x.shape[:2], 3, self.n_head, -1).unbind(2)
        q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        if cache is not None:
            k, v = cache[0].write(cache[1], k, v)
        if query_scale is not None:
            q = q * query_scale[:, :, None, None].to(q.dtype)
        return self.c_proj(attention(q, k, v, layout).flatten(2))


class QwenBlock(nn.Module):
    """``h = x + attn(ln_1(x))``, then ``y = h + mlp(ln_2(h))``."""

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
        cache: tuple[CacheWrite, int] | None = None,
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), rotary, layout, query_scale, cache)
        return x + self.mlp(self.ln_2(x))


class QwenDecoder(nn.Module):
    """Embeddings -> blocks -> ``ln_f``.

    Takes input embeddings so audio can be spliced in before the blocks.
    """

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
        cache_slots: torch.Tensor | None = None,
        key_length: int | None = None,
    ) -> tuple[torch.Tensor, KVCache | None]:
        """``inputs_embeds`` ``[B, L, D]`` -> hidden states ``[B, L, D]``, and ``kv_cache``.

        ``kv_cache`` is updated in place. Without ``kv_cache``, ``attention_mask`` ``[B, L]`` holds
        0 for padding. Equal non-zero ids there mark one sequence (packing).

        With ``kv_cache``, row ``b`` continues the sequence in slot ``cache_slots[b]`` (default:
        slot ``b``). Its new tokens are written in place after the slot's ``lengths`` tokens and
        attend to them. ``attention_mask`` ``[B, L]`` marks the new tokens, with 0 for left padding.
        ``key_length`` (default: all) bounds the slot positions read. It must therefore cover every
        row's length after this forward.
        """
        if kv_cache is not None:
            hidden = self._forward_cached(
                inputs_embeds, attention_mask, position_ids, kv_cache, cache_slots, key_length
            )
            return hidden, kv_cache
        batch, length = inputs_embeds.shape[:2]
        if position_ids is None:
            position_ids = torch.arange(length, device=inputs_embeds.device).expand(batch, -1)
        elif position_ids.shape != (batch, length):
            raise ValueError(
                f"position_ids has shape {tuple(position_ids.shape)}, expected {(batch, length)}"
            )
        alpha = self._ntk_alpha(batch, length, attention_mask, inputs_embeds.device)
        rotary = rotary_cos_sin(
            position_ids, self.config.kv_channels, self.config.rotary_emb_base, alpha
        )
        query_scale = None
        if not self.training and int(position_ids.max()) + 1 > self.config.seq_length:
            query_scale = self._logn_scale(position_ids)
        layout = AttentionLayout.build(
            attention_mask,
            batch_size=batch,
            query_length=length,
            key_length=length,
            causal=True,
            backend=self.attention_backend,
            device=inputs_embeds.device,
            dtype=inputs_embeds.dtype,
        )
        x = inputs_embeds
        for block in self.h:
            if self.activation_checkpointing and self.training:
                x = checkpoint(block, x, rotary, layout, query_scale, use_reentrant=False)
            else:
                x = block(x, rotary, layout, query_scale)
        return self.ln_f(x), None

    def _forward_cached(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        cache: KVCache,
        slots: torch.Tensor | None,
        key_length: int | None,
    ) -> torch.Tensor:
        """The forward over a static cache. Every index is computed on the device (no host sync)."""
        batch, length = inputs_embeds.shape[:2]
        device = inputs_embeds.device
        rows = torch.arange(batch, device=device) if slots is None else slots
        past = cache.lengths[rows]
        if attention_mask is None:  # every new token is real (a decoding step)
            valid, new = None, length
            where = past[:, None] + torch.arange(
                length, device=device
            )  # each new token's slot position
        else:
            valid = attention_mask.to(device) != 0
            new = valid.sum(-1)
            where = past[:, None] + valid.long().cumsum(-1) - 1
        if position_ids is None:
            position_ids = where.clamp(min=0)
        # The release fixes the NTK factor at prefill from the true length; a continued slot keeps
        # its own.
        alpha = cache.ntk_alpha[:batch] if slots is None else cache.ntk_alpha[rows]
        if length > 1 or attention_mask is not None:  # a prefill, or a continuation
            lengths_mask = None if valid is None else valid.long()
            alpha = torch.where(
                past == 0, self._ntk_alpha(batch, length, lengths_mask, device), alpha
            )
            cache.ntk_alpha[rows] = alpha
        rotary = rotary_cos_sin(
            position_ids, self.config.kv_channels, self.config.rotary_emb_base, alpha
        )
        key_length = cache.max_length if key_length is None else key_length
        # logN changes nothing within seq_length: skipped when no position can pass it
        query_scale = (
            self._logn_scale(position_ids) if key_length > self.config.seq_length else None
        )
        # Padding, and the tokens of a free slot that a batch-wide step still feeds, go to the
        # scratch index.
        if valid is not None:
            where = torch.where(valid, where, torch.full_like(where, cache.max_length))
        index = (rows[:, None].expand(batch, length), where.clamp(max=cache.max_length))
        keys = torch.arange(key_length, device=device)
        allowed = keys[None, None, :] <= where[:, :, None]
        if valid is not None:
            allowed |= (keys == 0)[None, None, :] & ~valid[
                :, :, None
            ]  # a padded query sees key 0, not nothing
        layout = AttentionLayout(
            "sdpa",
            causal=False,
            query_length=length,
            key_length=key_length,
            query_valid=valid,
            sdpa_mask=allowed[:, None],
        )
        write = CacheWrite(cache, slots, index, key_length)
        x = inputs_embeds
        for i, block in enumerate(self.h):
            x = block(x, rotary, layout, query_scale, (write, i))
        cache.lengths[rows] = (past + new).clamp(max=cache.max_length)
        return self.ln_f(x)

    def _ntk_alpha(
        self, batch: int, length: int, attention_mask: torch.Tensor | None, device: torch.device
    ) -> torch.Tensor:
        if self.training or not self.config.use_dynamic_ntk:
            return torch.ones(batch, dtype=torch.float64, device=device)
        lengths = torch.full((batch,), length, device=device)
        if attention_mask is not None:
            # The release: per-sample true lengths beyond seq_length; at or below it the factor is 1
            # either way.
            lengths = (attention_mask > 0).sum(-1)
        return ntk_alpha(lengths, self.config.seq_length)

    def _logn_scale(self, position_ids: torch.Tensor) -> torch.Tensor | None:
        """``log(p + 1) / log(seq_length)`` beyond ``seq_length`` and exactly 1 before.

        Inference only.
        """
        if self.training or not self.config.use_logn_attn:
            return None
        seq_length = self.config.seq_length
        count = position_ids.float() + 1
        return torch.where(
            count > seq_length, torch.log(count) / math.log(seq_length), torch.ones_like(count)
        )
