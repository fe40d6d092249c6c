"""Metrics of the paper's benchmarks, computed as the release's ``eval_audio`` scripts compute them (spec §6).

Pure functions of text: each takes the references and the decoded hypotheses of one group of results (the release
groups by ``source``) and returns corpus-level numbers. Where the release has a quirk, the release's number is
reported beside a corrected one, never silently replaced.
"""

from qwen_audio.eval.metrics.alignment import alignment_error_ms, release_alignment_error_ms
from qwen_audio.eval.metrics.captioning import caption_scores
from qwen_audio.eval.metrics.classification import accuracy, binary_accuracy
from qwen_audio.eval.metrics.error_rate import error_rate
from qwen_audio.eval.metrics.music import nsynth_scores, parse_note
from qwen_audio.eval.metrics.text import whisper_normalize
from qwen_audio.eval.metrics.translation import bleu
from qwen_audio.text_normalize import release_normalize

__all__ = [
    "accuracy",
    "alignment_error_ms",
    "binary_accuracy",
    "bleu",
    "caption_scores",
    "error_rate",
    "nsynth_scores",
    "parse_note",
    "release_alignment_error_ms",
    "release_normalize",
    "whisper_normalize",
]
