"""Benchmark metrics of the paper, as the release's ``eval_audio`` scripts compute them (spec §6).

Pure functions of text: each takes the references and the decoded hypotheses of one group of results
(the release groups by ``source``) and returns corpus-level numbers. Where the release has a quirk,
the release's number is reported beside a corrected one, never silently replaced.

The names are imported on first use (:mod:`qwen_audio.lazy`): the data pipeline reads ``text``
without loading the scorers' libraries (jiwer, sacrebleu, scikit-learn, pycocoevalcap).
"""

from qwen_audio.lazy import lazy_exports

_MODULES = {
    "accuracy": "qwen_audio.eval.metrics.classification",
    "alignment_error_ms": "qwen_audio.eval.metrics.alignment",
    "binary_accuracy": "qwen_audio.eval.metrics.classification",
    "bleu": "qwen_audio.eval.metrics.translation",
    "caption_scores": "qwen_audio.eval.metrics.captioning",
    "error_rate": "qwen_audio.eval.metrics.error_rate",
    "majority_accuracy": "qwen_audio.eval.metrics.majority",
    "majority_answer": "qwen_audio.eval.metrics.majority",
    "nsynth_scores": "qwen_audio.eval.metrics.music",
    "parse_note": "qwen_audio.eval.metrics.music",
    "release_alignment_error_ms": "qwen_audio.eval.metrics.alignment",
    "release_normalize": "qwen_audio.text_normalize",
    "whisper_normalize": "qwen_audio.eval.metrics.text",
}
__all__ = sorted(_MODULES)
__getattr__, __dir__ = lazy_exports(__name__, _MODULES)
