"""Prompts -> one left-padded batch: the ids, their mask and the encoder input of every audio.

Neutral ground between the front end and its users: generation, evaluation data, the server and the
experiments batch prompts the same way, and none of them has to import another to do it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from qwen_audio.clips import featurize
from qwen_audio.prompts import Example, encode_text
from qwen_audio.tokenizer import Tokenizer


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, L]`` ids left-padded with ``pad_id`` and the matching 0/1 attention mask."""
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        if sequence:
            ids[row, length - len(sequence) :] = torch.as_tensor(sequence)
            mask[row, length - len(sequence) :] = 1
    return ids, mask


class PromptBatch(NamedTuple):
    """Left-padded prompt ids and mask, and the mel + valid lengths of their N audios.

    The mel is ``[N, n_mels, T]``.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    audio_mel: torch.Tensor | None
    audio_mel_lengths: torch.Tensor | None

    def to(self, device: torch.device | str) -> PromptBatch:
        return PromptBatch(*(None if t is None else t.to(device) for t in self))


def batch_prompts(prompts: Sequence[Example], pad_id: int, n_mels: int = 80) -> PromptBatch:
    """Left-pad encoded prompts; compute the encoder input (``n_mels`` bins) of each clip."""
    ids, mask = left_pad([p.ids for p in prompts], pad_id)
    mels, lengths = featurize([clip for prompt in prompts for clip in prompt.clips], n_mels)
    if not mels:
        return PromptBatch(ids, mask, None, None)
    mel = torch.nn.utils.rnn.pad_sequence([m.T for m in mels], batch_first=True).transpose(1, 2)
    return PromptBatch(ids, mask, mel, torch.tensor(lengths))


def encode_prompts(
    tokenizer: Tokenizer, prompts: Sequence[str], max_length: int, n_mels: int = 80
) -> PromptBatch:
    """Raw release-style prompts -> one batch.

    The prompts hold tags as text and ``<audio>PATH</audio>`` spans, several allowed. As in the
    release every special-token text is a special token. A prompt longer than ``max_length`` tokens
    (audio placeholders included) raises ValueError; a missing audio file raises FileNotFoundError
    naming it.
    """
    encoded = [
        encode_prompt(tokenizer, prompt, max_length, index) for index, prompt in enumerate(prompts)
    ]
    return batch_prompts(encoded, tokenizer.eod, n_mels)


def encode_prompt(tokenizer: Tokenizer, prompt: str, max_length: int, index: int = 0) -> Example:
    """One raw prompt (see :func:`encode_prompts`); ``index`` names it in errors."""
    if not prompt:
        raise ValueError(f"prompt {index} is empty")
    tokens = encode_text(tokenizer, prompt)
    if len(tokens.ids) > max_length:
        raise ValueError(
            f"prompt {index} is {len(tokens.ids)} tokens long (audio placeholders included), "
            f"more than max_length {max_length}"
        )
    return tokens
