"""The release's text normalisation and the language check it needs.

The normalisation is ``remove_sp`` in ``evaluate_asr.py``. It sits below ``data/`` and ``eval/``.
WER scoring normalises with it, and the manifest reader compares spellings after it. Neither package
thus has to import the other.
"""

from __future__ import annotations

import re

from qwen_audio.tokenizer import LANGUAGES

_SPECIAL_TOKEN = re.compile(r"<\|.*?\|>")
_WHITESPACE = re.compile(r"\s+")
_SPACE_BEFORE_PUNCTUATION = re.compile(r" ?([!,.?;:])")


def check_language(language: str, field: str = "language") -> None:
    if language not in LANGUAGES:
        raise ValueError(
            f"{field} {language!r} is not one of the released languages {', '.join(LANGUAGES)}"
        )


def release_normalize(text: str, language: str) -> str:
    """Normalise ``text`` as the release's ``remove_sp`` does.

    Every ``<|...|>`` becomes a space, and runs of whitespace one space. The space before ``!,.?;:``
    goes, and leading spaces go. For Chinese all whitespace goes, since it is scored by characters.
    """
    check_language(language)
    text = _WHITESPACE.sub(" ", _SPECIAL_TOKEN.sub(" ", text))
    text = _SPACE_BEFORE_PUNCTUATION.sub(r"\1", text).lstrip(" ")
    return _WHITESPACE.sub("", text) if language == "zh" else text
