"""The audio encoder: Whisper-large-v2's encoder and the layers after it.

Those layers are a stride-2 average pool, ``ln_post``, ``proj`` and audio BOS/EOS.

Parameter names are the release's (``conv1``, ``blocks.N.attn.query`` ...), which are also
openai-whisper's. A Whisper checkpoint thus loads by renaming its ``encoder.`` prefix.

The encoder takes variable lengths and is batch-invariant. Clip ``b`` with ``mel_len`` valid frames
has ``T = conv_frames(mel_len)`` encoder frames. The release cuts the mel batch at the longest
clip's ``2 * T`` frames. A shorter clip's conv stem then reads real padding frames at its right
edge. Its output thus depends on its batch-mates (spec §10).

Here mel frames at index >= ``2 * T`` of each clip are zeroed before ``conv1``. The zero padding of
``conv1`` is then what the clip sees when it is encoded alone. The receptive field of ``conv2`` for
the last valid frame ends at frame ``2 * T - 1``. After the positional add, frames >= ``T`` are
zeroed and masked as keys, as in the release. The pool never mixes a valid frame with a padded one,
because an odd last frame is dropped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from qwen_audio.config import AudioEncoderConfig
from qwen_audio.kernels import pool_layer_norm
from qwen_audio.lengths import conv_frames, pooled_frames
from qwen_audio.modules.attention import AttentionLayout, attention
from qwen_audio.modules.layers import sinusoids


class EncoderAttention(nn.Module):
    """Whisper's self-attention: ``key`` has no bias (softmax is invariant to it)."""

    def __init__(self, n_state: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.query = nn.Linear(n_state, n_state)
        self.key = nn.Linear(n_state, n_state, bias=False)
        self.value = nn.Linear(n_state, n_state)
        self.out = nn.Linear(n_state, n_state)

    def forward(self, x: torch.Tensor, layout: AttentionLayout) -> torch.Tensor:
        shape = (*x.shape[:2], self.n_head, -1)
        q, k, v = (proj(x).view(shape) for proj in (self.query, self.key, self.value))
        return self.out(attention(q, k, v, layout).flatten(2))


class EncoderBlock(nn.Module):
    """Pre-LN residual block with a 4x GELU MLP.

    ``x += attn(attn_ln(x))``, then ``x += mlp(mlp_ln(x))``.
    """

    def __init__(self, n_state: int, n_head: int, eps: float) -> None:
        super().__init__()
        self.attn = EncoderAttention(n_state, n_head)
        self.attn_ln = nn.LayerNorm(n_state, eps=eps)
        self.mlp = nn.Sequential(
            nn.Linear(n_state, 4 * n_state), nn.GELU(), nn.Linear(4 * n_state, n_state)
        )
        self.mlp_ln = nn.LayerNorm(n_state, eps=eps)

    def forward(self, x: torch.Tensor, layout: AttentionLayout) -> torch.Tensor:
        x = x + self.attn(self.attn_ln(x), layout)
        return x + self.mlp(self.mlp_ln(x))


class AudioEncoder(nn.Module):
    """Encode padded mel ``[N, n_mels, T]`` and valid mel lengths into per-clip LLM-width sequences.

    Each clip's sequence is its audio BOS, frames and audio EOS.
    """

    def __init__(self, config: AudioEncoderConfig, attention_backend: str = "auto") -> None:
        super().__init__()
        self.config = config
        self.attention_backend = attention_backend
        self.activation_checkpointing = False
        n_state = config.n_state
        self.conv1 = nn.Conv1d(config.n_mels, n_state, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(n_state, n_state, kernel_size=3, stride=2, padding=1)
        # Persistent, as released: the checkpoint stores it (bf16-rounded), and parity needs that
        # copy.
        self.register_buffer("positional_embedding", sinusoids(config.n_ctx, n_state))
        self.blocks = nn.ModuleList(
            EncoderBlock(n_state, config.n_head, config.layer_norm_eps)
            for _ in range(config.n_layer)
        )
        self.ln_post = nn.LayerNorm(n_state, eps=config.layer_norm_eps)
        self.proj = nn.Linear(n_state, config.output_dim)
        if config.learned_markers:
            self.audio_bos_eos_token = nn.Embedding(2, config.output_dim)

    def frames(
        self, mel: torch.Tensor, mel_lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the conv stem, positions and blocks.

        Returns ``[N, T, n_state]`` and the valid frame counts ``T_b`` ``[N]``.
        """
        if mel.dim() != 3 or mel.shape[1] != self.config.n_mels:
            raise ValueError(
                f"audio mel must be [N, {self.config.n_mels}, frames], got {tuple(mel.shape)}"
            )
        if mel_lengths.shape != (mel.shape[0],):
            raise ValueError(
                f"audio mel lengths must have shape ({mel.shape[0]},), got {tuple(mel_lengths.shape)}"
            )
        mel_lengths = mel_lengths.to(mel.device, torch.long)
        lengths = conv_frames(mel_lengths)
        longest = int(lengths.max())
        if (
            longest > self.config.n_ctx
            or int(mel_lengths.min()) < 1
            or int(mel_lengths.max()) > mel.shape[-1]
        ):
            raise ValueError(
                f"audio mel lengths {mel_lengths.tolist()} must lie in [1, {mel.shape[-1]}] (the mel width) and give "
                f"at most n_ctx={self.config.n_ctx} encoder frames ({2 * self.config.n_ctx} mel frames)"
            )
        read = 2 * lengths + self.config.mel_lookahead  # mel frames each clip's conv stem reads
        mel = mel[:, :, : int(read.max())].to(self.conv1.weight.dtype)
        frame = torch.arange(mel.shape[-1], device=mel.device)
        mel = mel.masked_fill((frame[None, :] >= read[:, None])[:, None, :], 0.0)
        x = F.gelu(self.conv2(F.gelu(self.conv1(mel)))).transpose(1, 2)
        x = x + self.positional_embedding[: x.shape[1]].to(x.dtype)
        valid = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]
        x = x.masked_fill(~valid[:, :, None], 0.0)
        layout = AttentionLayout.build(
            valid.long(),
            batch_size=x.shape[0],
            query_length=x.shape[1],
            key_length=x.shape[1],
            causal=False,
            backend=self.attention_backend,
            device=x.device,
            dtype=x.dtype,
        )
        for block in self.blocks:
            if self.activation_checkpointing and self.training:
                x = checkpoint(block, x, layout, use_reentrant=False)
            else:
                x = block(x, layout)
        return x, lengths

    def pool_and_norm(self, x: torch.Tensor) -> torch.Tensor:
        """Average-pool over time with stride 2, then apply ``ln_post``, giving ``[N, T // 2, D]``.

        Pooling comes first, as released. On CUDA this is one fused Triton kernel, elsewhere the
        torch ops (:func:`qwen_audio.kernels.pool_layer_norm`).
        """
        return pool_layer_norm(x, self.ln_post.weight, self.ln_post.bias, self.ln_post.eps)

    def forward(self, mel: torch.Tensor, mel_lengths: torch.Tensor) -> list[torch.Tensor]:
        """Encode each clip into one tensor ``[pooled_frames(T_b) + 2, output_dim]``.

        The tensor holds audio BOS, the audio tokens and audio EOS. Without ``learned_markers``
        (Qwen2-Audio), it holds only the ``pooled_frames(T_b)`` audio tokens.
        """
        x, lengths = self.frames(mel, mel_lengths)
        pooled = self.pool_and_norm(x)
        n_audio = pooled_frames(lengths)
        valid = torch.arange(pooled.shape[1], device=pooled.device)[None, :] < n_audio[:, None]
        tokens = self.proj(pooled[valid]).split(n_audio.tolist())
        if not self.config.learned_markers:
            return list(tokens)
        bos, eos = self.audio_bos_eos_token.weight.to(tokens[0].dtype).split(1)
        return [torch.cat([bos, clip, eos]) for clip in tokens]
