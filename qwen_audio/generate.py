"""Batched greedy generation with the KV cache.

Prompts of different lengths are left-padded and their rotary positions are taken from the attention mask, so a
batch gives exactly the tokens each prompt gives alone (the release counts the padding, see spec §3). The audio is
encoded and spliced once, at prefill; decoding steps feed only the new token.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch

from qwen_audio.model import QwenAudio


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, L]`` ids left-padded with ``pad_id`` and the matching 0/1 attention mask."""
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        if sequence:
            ids[row, length - len(sequence):] = torch.as_tensor(sequence)
            mask[row, length - len(sequence):] = 1
    return ids, mask


@torch.no_grad()
def greedy_generate(
    model: QwenAudio,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    stop_ids: Collection[int],
    max_new_tokens: int,
    vocab_size: int,
    audio_mel: torch.Tensor | None = None,
    audio_mel_lengths: torch.Tensor | None = None,
) -> list[list[int]]:
    """Greedy continuation of each left-padded prompt, up to ``max_new_tokens``; stop tokens are not returned.

    Only the tokenizer's ``vocab_size`` ids are candidates: the embedding is padded beyond them (155947 rows for
    155165 tokens in the release) and those rows are no tokens.
    """
    device = input_ids.device
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    output = model(input_ids, audio_mel=audio_mel, audio_mel_lengths=audio_mel_lengths,
                   attention_mask=attention_mask, position_ids=positions, use_cache=True)
    stops = torch.tensor(sorted(stop_ids), device=device)
    generated = [[] for _ in range(input_ids.shape[0])]
    finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=device)
    next_position = positions[:, -1:] + 1
    for _ in range(max_new_tokens):
        token = output.logits[:, -1, :vocab_size].argmax(-1)
        finished |= torch.isin(token, stops)
        for row in (~finished).nonzero().flatten().tolist():
            generated[row].append(int(token[row]))
        if finished.all():
            break
        attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=1)
        output = model(token[:, None], attention_mask=attention_mask, position_ids=next_position,
                       kv_cache=output.kv_cache, use_cache=True)
        next_position = next_position + 1
    return generated
