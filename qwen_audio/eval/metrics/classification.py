"""Accuracy of label answers (scene, emotion, vocal sound, AQA): exact, case-sensitive match.

This is how the release scores them.
"""

from __future__ import annotations

from collections.abc import Sequence

from sklearn.metrics import accuracy_score

from qwen_audio.eval.metrics._inputs import check_pairs

YES_NO = ("yes", "no")


def accuracy(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """``sklearn.metrics.accuracy_score`` on the strings.

    "Yes" against "yes" is wrong, as in the release.
    """
    check_pairs(references, hypotheses)
    return float(accuracy_score(list(references), list(hypotheses)))


def binary_accuracy(references: Sequence[str], hypotheses: Sequence[str]) -> float | None:
    """Accuracy on the yes/no questions only (reference "yes" or "no" in any case), ClothoAQA's
    "binary" column; ``None`` when no reference is yes or no."""
    check_pairs(references, hypotheses)
    pairs = [
        (reference, hypothesis)
        for reference, hypothesis in zip(references, hypotheses)
        if reference.lower() in YES_NO
    ]
    if not pairs:
        return None
    yes_no_references, yes_no_hypotheses = zip(*pairs)
    return accuracy(yes_no_references, yes_no_hypotheses)
