"""QwenAudio: the audio encoder, the Qwen-7B decoder and the splice that joins them.

State-dict keys are the released checkpoint's. The release keeps the audio encoder inside the LLM
trunk (``transformer.audio.*`` beside ``transformer.wte``/``h``/``ln_f``) and the head outside
(``lm_head``). This module does the same, so a released folder loads with a plain
``load_state_dict``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from qwen_audio.config import QwenAudioConfig
from qwen_audio.modules.decoder import KVCache, QwenDecoder
from qwen_audio.modules.encoder import AudioEncoder
from qwen_audio.modules.fusion import splice_audio


@dataclass
class QwenAudioOutput:
    logits: torch.Tensor  # [B, L, vocab], in the model's dtype
    loss: torch.Tensor | None = None


def label_positions(labels: torch.Tensor) -> torch.Tensor:
    """``[B, L]`` bool: the positions whose logits predict a label.

    Position ``t`` predicts ``labels[:, t + 1]``.
    """
    return F.pad(labels[:, 1:] != -100, (0, 1))


def last_tokens(attention_mask: torch.Tensor) -> torch.Tensor:
    """``[B, L]`` bool marking each row's last real token (``attention_mask`` != 0).

    It is the one position whose logits generation reads at prefill. With left padding it is the
    last column."""
    length = attention_mask.shape[1]
    last = length - 1 - (attention_mask != 0).flip(-1).int().argmax(-1)  # argmax: the first maximum
    return F.one_hot(last, length).bool()


class TokenLosses(NamedTuple):
    """Per-position scores of next-token prediction, each ``[B, L - 1]``.

    ``losses`` is the token loss (0 where ignored), ``correct`` whether the argmax equals the label,
    and ``counted`` which positions hold a label. Means over rows serve the total loss and the
    per-task metrics alike.
    """

    losses: torch.Tensor
    correct: torch.Tensor
    counted: torch.Tensor

    def mean_loss(self, rows: Sequence[int] | slice = slice(None)) -> torch.Tensor:
        """The mean loss over the counted positions of ``rows`` (all by default)."""
        return self.losses[rows].sum() / self.counted[rows].sum().clamp(min=1)

    def accuracy(self, rows: Sequence[int] | slice = slice(None)) -> torch.Tensor:
        """The share of counted positions of ``rows`` whose argmax is the label."""
        return self.correct[rows].sum() / self.counted[rows].sum().clamp(min=1)


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> TokenLosses:
    """Next-token cross-entropy per position on fp32 logits.

    ``labels`` are shifted by one, and -100 is ignored. ``logits`` is ``[B, L, vocab]``, or
    ``[n, vocab]`` computed at :func:`label_positions` only (in row-major order). The loss reads
    nothing else, so training skips the head everywhere else.
    """
    targets = labels[:, 1:].to(logits.device)
    counted = targets != -100
    if logits.dim() == 3:
        logits = logits[:, :-1][counted]
    counted_targets = targets[counted]
    losses = torch.zeros(counted.shape, device=logits.device).masked_scatter(
        counted, F.cross_entropy(logits.float(), counted_targets, reduction="none")
    )
    correct = torch.zeros_like(counted).masked_scatter(
        counted, logits.argmax(-1) == counted_targets
    )
    return TokenLosses(losses, correct, counted)


class QwenAudio(nn.Module):
    def __init__(self, config: QwenAudioConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = QwenDecoder(config.decoder, config.attention_backend)
        self.transformer.add_module("audio", AudioEncoder(config.encoder, config.attention_backend))
        self.lm_head = nn.Linear(config.decoder.hidden_size, config.decoder.vocab_size, bias=False)
        self.init_weights()

    @property
    def encoder(self) -> AudioEncoder:
        return self.transformer.audio

    @property
    def decoder(self) -> QwenDecoder:
        return self.transformer

    def init_weights(self) -> None:
        """The release's initialisation (``initializer_range`` 0.02), for encoder and decoder alike.

        Linear and embedding weights ~ N(0, 0.02) with zero biases, RMSNorm weights 1, and every
        ``c_proj`` (attention output, MLP down projection) ~ N(0, 0.02 / sqrt(2 * n_layers)). The
        GELU conv stem gets He (Kaiming) normal weights and zero biases. With PyTorch's default, the
        stem's output is a tenth of the fixed sinusoid table added to it. The encoder's output is
        then >90% position, and a model trained from scratch learns to ignore the audio. LayerNorm
        keeps PyTorch's defaults. The sinusoid table is fixed.
        """
        std = 0.02
        for name, module in self.named_modules():
            if isinstance(module, nn.Conv1d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.Linear, nn.Embedding)):
                scale = (
                    math.sqrt(2 * self.config.decoder.num_hidden_layers)
                    if name.endswith("c_proj")
                    else 1.0
                )
                nn.init.normal_(module.weight, mean=0.0, std=std / scale)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    def set_trainable(self, *, encoder: bool, decoder: bool) -> None:
        """Freeze or unfreeze the two parts.

        Stage 1 (pretraining) uses ``encoder=True, decoder=False``. Here the encoder includes
        pool/ln_post/proj and the audio BOS/EOS vectors. Stage 2 (SFT) uses the reverse."""
        self.encoder.requires_grad_(encoder)
        for name, param in self.named_parameters():
            if not name.startswith("transformer.audio."):
                param.requires_grad_(decoder)

    def set_activation_checkpointing(self, enabled: bool) -> None:
        """Recompute each encoder and decoder block in backward to save memory.

        This uses ``torch.utils.checkpoint``.
        """
        self.encoder.activation_checkpointing = enabled
        self.decoder.activation_checkpointing = enabled

    def encode_audio(self, mel: torch.Tensor, mel_lengths: torch.Tensor) -> list[torch.Tensor]:
        """Per clip ``[n_audio + 2, hidden]`` (see :class:`AudioEncoder`).

        Without learned markers (Qwen2-Audio), the ends are the embeddings of the marker tokens
        ``<|audio_bos|>``/``<|audio_eos|>``. The prompt holds these tokens."""
        clips = self.encoder(mel, mel_lengths)
        if self.config.encoder.learned_markers:
            return clips
        markers = self.transformer.wte(
            torch.tensor(
                [self.config.audio_start_id, self.config.audio_end_id],
                device=self.transformer.wte.weight.device,
            )
        )
        return [torch.cat([markers[:1], clip.to(markers.dtype), markers[1:]]) for clip in clips]

    def forward(
        self,
        input_ids: torch.Tensor,
        audio_mel: torch.Tensor | None = None,
        audio_mel_lengths: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        cache_slots: torch.Tensor | None = None,
        key_length: int | None = None,
        audio_embeds: Sequence[torch.Tensor] | None = None,
        logits_at: torch.Tensor | None = None,
    ) -> QwenAudioOutput:
        """Logits for ``input_ids`` ``[B, L]``, and the loss when ``labels`` are given.

        Audio comes as mel ``[N, n_mels, T]`` with valid mel lengths ``[N]`` (samples // 160), one
        clip per ``<audio>`` in row-major order. Or it comes already encoded, as ``audio_embeds``.
        ``attention_mask`` ``[B, L]`` is 0 at padding. Several ids in a row mark packed sequences.
        ``position_ids`` ``[B, L]`` are the rotary positions, by default the index. With
        ``kv_cache`` the rows continue the sequences of its slots, written in place (see
        :class:`QwenDecoder`).

        ``logits_at`` ``[B, L]`` bool computes the head only there, giving logits ``[n, vocab]`` in
        row-major order. Training needs the :func:`label_positions` alone, and the head is most of a
        small model's FLOPs. Generation's prefill needs the :func:`last_tokens` alone. At full size
        the head gives 155,947 logits per position.

        The loss is the mean of :func:`token_losses`, on logits upcast to fp32. That is more
        accurate than the release, which used the working dtype (bf16).
        """
        embeds = self.transformer.wte(input_ids)
        if audio_mel is not None:
            if audio_embeds is not None:
                raise ValueError("pass either audio_mel or audio_embeds, not both")
            if audio_mel_lengths is None:
                raise ValueError(
                    "audio_mel needs audio_mel_lengths (valid mel frames per clip, samples // 160)"
                )
            audio_embeds = self.encode_audio(audio_mel, audio_mel_lengths)
        if audio_embeds is not None:
            embeds = splice_audio(embeds, input_ids, audio_embeds, self.config.audio_start_id)
        hidden, _ = self.transformer(
            embeds, attention_mask, position_ids, kv_cache, cache_slots, key_length
        )
        logits = self.lm_head(hidden if logits_at is None else hidden[logits_at])
        loss = None
        if labels is not None:
            if labels.shape != input_ids.shape:
                raise ValueError(
                    f"labels {tuple(labels.shape)} must have the shape of input_ids "
                    f"{tuple(input_ids.shape)}"
                )
            loss = token_losses(logits, labels).mean_loss()
        return QwenAudioOutput(logits, loss)
