"""Corpus word error rate as the release scores ASR and SRWT transcripts.

Chinese is scored by character error rate.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jiwer

from qwen_audio.eval.metrics._inputs import check_pairs
from qwen_audio.eval.metrics.text import whisper_normalize
from qwen_audio.text_normalize import release_normalize

NORMALIZERS = ("release", "whisper")


def error_rate(
    references: Sequence[str], hypotheses: Sequence[str], language: str, normalizer: str = "release"
) -> float:
    """Σ edit distance / Σ reference length over the corpus, not a mean of per-utterance rates.

    ``normalizer="release"`` is ``evaluate_asr.py``: ``release_normalize``, lower case,
    whitespace-separated words, punctuation kept (``"world."`` and ``"world"`` differ), and for
    Chinese the characters are the units. ``"whisper"`` replaces the release's normalisation by
    Whisper's English normaliser (English only). jiwer's Levenshtein distance is the release's
    ``editdistance.eval`` on the same units.
    """
    check_pairs(references, hypotheses)
    if normalizer not in NORMALIZERS:
        raise ValueError(f"normalizer {normalizer!r} is not one of {', '.join(NORMALIZERS)}")
    if normalizer == "whisper" and language != "en":
        raise ValueError(
            f"normalizer 'whisper' is Whisper's English normaliser; language is {language!r}"
        )
    normalize = (
        whisper_normalize
        if normalizer == "whisper"
        else functools.partial(release_normalize, language=language)
    )
    reference_units = [_units(normalize(text), language) for text in references]
    hypothesis_units = [_units(normalize(text), language) for text in hypotheses]
    if not any(reference_units):
        raise ValueError(
            "the references hold no word after normalisation: the error rate is undefined"
        )
    return jiwer.wer(
        [" ".join(units) for units in reference_units],
        [" ".join(units) for units in hypothesis_units],
    )


def _units(text: str, language: str) -> list[str]:
    words = text.lower().split()
    return list("".join(words)) if language == "zh" else words
