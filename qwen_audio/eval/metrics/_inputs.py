"""The check shared by every metric: paired inputs."""

from __future__ import annotations

from collections.abc import Sequence


def check_pairs(references: Sequence[object], hypotheses: Sequence[object]) -> None:
    """One hypothesis per reference, at least one pair.

    A bare string (a common slip) is not a list of texts.
    """
    for name, texts in (("references", references), ("hypotheses", hypotheses)):
        if isinstance(texts, str):
            raise ValueError(f"{name} must be a list of texts, got one string: {texts[:40]!r}")
    if len(references) != len(hypotheses):
        raise ValueError(
            f"{len(references)} references but {len(hypotheses)} hypotheses: each hypothesis needs "
            "its reference"
        )
    if not references:
        raise ValueError("no references to score")
