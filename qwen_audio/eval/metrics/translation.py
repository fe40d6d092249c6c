"""Corpus BLEU of speech translation, tokenised per target language.

The tokenisation is the one the release's ``evaluate_st.py`` does.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

import sacrebleu

from qwen_audio.eval.metrics._inputs import check_pairs
from qwen_audio.text_normalize import check_language

_TOKENIZERS = {
    "zh": "zh",
    "ja": "ja-mecab",
}  # every other target language: sacrebleu's default "13a"


def bleu(references: Sequence[str], hypotheses: Sequence[str], target_language: str) -> float:
    """``sacrebleu.corpus_bleu`` (0-100) on the raw texts, one reference each; Chinese is split into
    characters, Japanese into MeCab words (sacrebleu's ``[ja]`` extra), other languages by the 13a
    tokenizer."""
    check_pairs(references, hypotheses)
    check_language(target_language, "target_language")
    tokenize = _TOKENIZERS.get(target_language, "13a")
    if tokenize == "ja-mecab":
        missing = [
            module for module in ("MeCab", "ipadic") if importlib.util.find_spec(module) is None
        ]
        if missing:
            raise ImportError(
                f"BLEU into Japanese tokenises with MeCab, but {' and '.join(missing)} cannot be "
                "imported: install sacrebleu's extra, pip install 'sacrebleu[ja]'"
            )
    return sacrebleu.corpus_bleu(list(hypotheses), [list(references)], tokenize=tokenize).score
