"""Average alignment shift (AAS) of word-level timestamps (SRWT), in milliseconds.

Reference and hypothesis units are aligned by minimum edit distance with the ``edit-distance``
package. It is the aligner of the release's ``evaluate_srwt.py`` (FunASR's
``AverageShiftCalculator``). ``difflib`` matches longest common blocks instead and pairs other
units. For "a b c" against "a c b" it times "a" and "b", the edit-distance alignment only "a". Only
units aligned as equal are timed. AAS is the mean over them of |Δstart| + |Δend|.

There are two procedures. Both take the generations as decoded, i.e. continuing the SRWT prompt
after its final ``<|0.00|>``.

- ``alignment_error_ms`` (ours) puts the prompt's ``<|0.00|>`` back, so the first word is timed too.
  Its units are the words of ``parse_timestamped_words``. ``<|sil|>`` is not a word, and its bounds
  are its neighbours' bounds. A generation that does not parse (say, cut off at the generation
  limit) times nothing.
- ``release_alignment_error_ms`` is the release's procedure, for comparison with Table 3 (51.5 ms).
  Its units are the pieces strictly between timestamps. A generation thus loses its first unit, and
  ``<|sil|>`` counts as a unit.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence

import edit_distance

from qwen_audio.eval.metrics._inputs import check_pairs
from qwen_audio.prompts import TimedWord, parse_timestamped_words

SRWT_PROMPT_END = (
    "<|0.00|>"  # the SRWT prompt's last token: the time the first generated unit starts at
)

_RELEASE_TIMESTAMP = re.compile(r"<\|\d{1,2}\.\d+\|>")
_RELEASE_STRIPPED = ("<|startoftranscript|>", "<|transcribe|>")


def alignment_error_ms(references: Sequence[str], hypotheses: Sequence[str]) -> float | None:
    """AAS over the words of all utterances.

    It is ``None`` when no word of any hypothesis matches its reference.

    ``references`` are complete SRWT texts (``<|0.00|><|sil|><|0.54|>面<|0.86|>...``) and must
    parse. ``hypotheses`` are the generations that follow the prompt's ``<|0.00|>``.
    """
    check_pairs(references, hypotheses)
    reference_words = []
    for index, reference in enumerate(references):
        try:
            reference_words.append(parse_timestamped_words(reference))
        except ValueError as error:
            raise ValueError(f"references[{index}]: {error}") from error
    hypothesis_words = []
    for hypothesis in hypotheses:
        try:
            hypothesis_words.append(parse_timestamped_words(SRWT_PROMPT_END + hypothesis))
        except ValueError:
            hypothesis_words.append([])
    return _mean_shift_ms(zip(reference_words, hypothesis_words))


def release_alignment_error_ms(
    references: Sequence[str], hypotheses: Sequence[str]
) -> float | None:
    """AAS as ``evaluate_srwt.py`` computes it, on the ground truths and the decoded generations.

    It is ``None`` when nothing matches, where the release divides by zero. Text before the first
    and after the last timestamp is dropped (a generation's first unit, a unit cut off at the
    generation limit). A text without any timestamp is skipped together with its partner. The
    release meant to skip it but drops it from its own side's list only. That list then fails the
    release's length assertion or pairs later utterances with the wrong partner.
    """
    check_pairs(references, hypotheses)
    pairs = [
        (_release_units(reference), _release_units(hypothesis))
        for reference, hypothesis in zip(references, hypotheses)
    ]
    return _mean_shift_ms(
        [
            (truth, predicted)
            for truth, predicted in pairs
            if truth is not None and predicted is not None
        ]
    )


def _release_units(text: str) -> list[TimedWord] | None:
    """``read_timestamps``: ``<|d.dd|>`` timestamps and the pieces strictly between them.

    A few tags are stripped first.
    """
    for tag in _RELEASE_STRIPPED:
        text = text.replace(tag, "")
    text = text.replace("<|en|>", "") if "<|en|>" in text else text.replace("<|zh|>", "")
    times = [float(token[2:-2]) for token in _RELEASE_TIMESTAMP.findall(text)]
    units = _RELEASE_TIMESTAMP.split(text)[1:-1]
    if len(times) != len(units) + 1:
        return None
    return [TimedWord(unit, times[index], times[index + 1]) for index, unit in enumerate(units)]


def _mean_shift_ms(utterances: Iterable[tuple[list[TimedWord], list[TimedWord]]]) -> float | None:
    shift, matched = 0.0, 0
    for truth, predicted in utterances:
        for reference_index, hypothesis_index in _equal_units(truth, predicted):
            reference, hypothesis = truth[reference_index], predicted[hypothesis_index]
            shift += abs(reference.start - hypothesis.start) + abs(reference.end - hypothesis.end)
            matched += 1
    return 1000 * shift / matched if matched else None


def _equal_units(truth: list[TimedWord], predicted: list[TimedWord]) -> Iterator[tuple[int, int]]:
    """Index pairs aligned as equal. The package's opcodes cover one unit each."""
    matcher = edit_distance.SequenceMatcher(
        [word.text for word in truth], [word.text for word in predicted]
    )
    for tag, reference_index, _, hypothesis_index, _ in matcher.get_opcodes():
        if tag == "equal":
            yield reference_index, hypothesis_index
