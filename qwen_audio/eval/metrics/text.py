"""Whisper's English normaliser, reported beside the release's own (``qwen_audio.text_normalize``).

The release (``remove_sp`` in ``evaluate_asr.py``) only removes special tokens and the spaces before
punctuation: no spelling, number or punctuation normalisation, so its WER counts "Mr." against
"mister". Most English ASR results since Whisper are scored after Whisper's normaliser instead, and
the two can differ by a large part of the WER; reporting both makes our numbers comparable with
either.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from whisper.normalizers import EnglishTextNormalizer


@functools.cache
def _english_normalizer() -> EnglishTextNormalizer:
    from whisper.normalizers import (
        EnglishTextNormalizer,
    )  # openai-whisper loads torch and numba: only when scoring

    return EnglishTextNormalizer()  # reads openai-whisper's spelling table once


def whisper_normalize(text: str) -> str:
    """openai-whisper's ``EnglishTextNormalizer``: lower case, no punctuation or bracketed spans (so
    no special tokens), British to American spelling, spelled-out numbers as digits, titles expanded
    ("Mr." -> "mister")."""
    return _english_normalizer()(text)
