"""Batching: right-pad token ids (labels with -100) and stack every clip's mel.

The mels are zero-padded and stacked in prompt order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn.utils.rnn import pad_sequence

from qwen_audio.data.dataset import Sample
from qwen_audio.prompts import IGNORE_INDEX


def collate(samples: Sequence[Sample], pad_id: int) -> dict:
    """``input_ids``/``labels``/``attention_mask`` ``[B, L]``; ``audio_mel`` ``[N, n_mels, T]`` with
    ``audio_mel_lengths`` ``[N]``, one row per ``<audio>`` in row-major order (the order the model
    splices)."""
    ids = pad_sequence([s.input_ids for s in samples], batch_first=True, padding_value=pad_id)
    mask = pad_sequence(
        [torch.ones_like(s.input_ids) for s in samples], batch_first=True, padding_value=0
    )
    labels = pad_sequence([s.labels for s in samples], batch_first=True, padding_value=IGNORE_INDEX)
    mels = [mel.T for s in samples for mel in s.mels]
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": labels,
        "audio_mel": pad_sequence(mels, batch_first=True).transpose(1, 2) if mels else None,
        "audio_mel_lengths": torch.tensor(
            [n for s in samples for n in s.mel_lengths], dtype=torch.long
        ),
        "task": [s.task for s in samples],
    }
