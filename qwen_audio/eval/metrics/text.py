"""Text normalisation before scoring: the release's own, and Whisper's English normaliser reported beside it.

The release (``remove_sp`` in ``evaluate_asr.py``) only removes special tokens and the spaces before punctuation:
no spelling, number or punctuation normalisation, so its WER counts "Mr." against "mister". Most English ASR results
since Whisper are scored after Whisper's normaliser instead, and the two can differ by a large part of the WER;
reporting both makes our numbers comparable with either.
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING

from qwen_audio.eval.metrics._inputs import check_language

if TYPE_CHECKING:
    from whisper.normalizers import EnglishTextNormalizer

_SPECIAL_TOKEN = re.compile(r"<\|.*?\|>")
_WHITESPACE = re.compile(r"\s+")
_SPACE_BEFORE_PUNCTUATION = re.compile(r" ?([!,.?;:])")


def release_normalize(text: str, language: str) -> str:
    """The release's ``remove_sp``: every ``<|...|>`` becomes a space, runs of whitespace one space, the space before
    ``!,.?;:`` goes and leading spaces go; for Chinese all whitespace goes (it is scored by characters)."""
    check_language(language)
    text = _WHITESPACE.sub(" ", _SPECIAL_TOKEN.sub(" ", text))
    text = _SPACE_BEFORE_PUNCTUATION.sub(r"\1", text).lstrip(" ")
    return _WHITESPACE.sub("", text) if language == "zh" else text


@functools.cache
def _english_normalizer() -> EnglishTextNormalizer:
    from whisper.normalizers import EnglishTextNormalizer  # openai-whisper loads torch and numba: only when scoring

    return EnglishTextNormalizer()  # reads openai-whisper's spelling table once


def whisper_normalize(text: str) -> str:
    """openai-whisper's ``EnglishTextNormalizer``: lower case, no punctuation or bracketed spans (so no special
    tokens), British to American spelling, spelled-out numbers as digits, titles expanded ("Mr." -> "mister")."""
    return _english_normalizer()(text)
