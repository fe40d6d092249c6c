"""The majority baseline printed beside every accuracy.

It always gives the training split's most common answer. It is taken from the training split, never
from the scored one. A model can know how often each answer occurs in its training data, but not in
the test data. The test split's most common answer is thus a baseline no model could follow.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence


def majority_answer(train_answers: Iterable[str]) -> str | None:
    """Return the training split's most common answer, or ``None`` without training answers.

    Among equally common answers, the first one seen wins.
    """
    counts = Counter(train_answers)
    return counts.most_common(1)[0][0] if counts else None


def majority_accuracy(train_answers: Iterable[str], references: Sequence[str]) -> float:
    """Return the accuracy on ``references`` of always answering the majority answer.

    That answer is :func:`majority_answer` of ``train_answers``. This is the chance level of an
    accuracy. With no training answers the baseline knows no answer and scores 0.
    """
    if not references:
        raise ValueError("majority_accuracy needs at least one reference")
    answer = majority_answer(train_answers)
    return sum(reference == answer for reference in references) / len(references)
