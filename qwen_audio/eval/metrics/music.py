"""Music note analysis (NSynth) scores, parsed and computed as the release does.

The release's script is ``evaluate_note_analysis.py``. The model answers
``<|pitch|><|midi_pitch_60|><|velocity|><|midi_velocity_100|><|instrument|>keyboard_acoustic
<|sonic|>bright, percussive``. Instrument, pitch and velocity are scored by exact match. The sonic
qualities are scored by macro mean average precision of the binary predictions.

The release's chroma accuracy compares one-hot *column* indices modulo 12. The columns are the
pitches seen in this corpus. It is thus not the pitch class unless every pitch between the lowest
and the highest occurs. We report it for comparability. Beside it we report the pitch class (MIDI %
12), which HEAR's ``ChromaAccuracy`` computes on its contiguous pitch vocabulary.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import accuracy_score, average_precision_score
from sklearn.preprocessing import MultiLabelBinarizer

from qwen_audio.eval.metrics._inputs import check_pairs

QUALITIES = frozenset(
    {
        "bright",
        "dark",
        "distortion",
        "fast_decay",
        "long_release",
        "multiphonic",
        "nonlinear_env",
        "percussive",
        "reverb",
        "tempo-synced",
    }
)
MISSING = 128  # the release's pitch or velocity when the text has none (MIDI values are 0-127)

_PITCH = re.compile(r"<\|pitch\|><\|midi_pitch_(.*?)\|>")
_VELOCITY = re.compile(r"<\|velocity\|><\|midi_velocity_(.*?)\|>")
_INSTRUMENT = re.compile(r"<\|instrument\|>(.*)")
_QUALITIES = re.compile(r"<\|sonic\|>(.*)")


@dataclass(frozen=True)
class Note:
    pitch: int
    velocity: int
    instrument: str
    qualities: tuple[str, ...]


def parse_note(text: str) -> Note:
    """Parse a note answer as the release's ``get_note_info`` does.

    Each field is its first match. A pitch or velocity that is absent or not a number is
    ``MISSING``. An absent instrument or qualities field is empty. The instrument and qualities run
    to the next ``<``. Qualities are split on ", ", and only the ten NSynth qualities are kept.
    """
    return Note(
        pitch=_midi_value(_PITCH, text),
        velocity=_midi_value(_VELOCITY, text),
        instrument=_text_field(_INSTRUMENT, text),
        qualities=tuple(
            quality for quality in _text_field(_QUALITIES, text).split(", ") if quality in QUALITIES
        ),
    )


def _midi_value(pattern: re.Pattern[str], text: str) -> int:
    match = pattern.search(text)
    try:
        return int(match.group(1)) if match else MISSING
    except ValueError:
        return MISSING


def _text_field(pattern: re.Pattern[str], text: str) -> str:
    match = pattern.search(text)
    return match.group(1).split("<")[0] if match else ""


def nsynth_scores(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float | None]:
    """Score notes: instrument, velocity, pitch and chroma accuracy, and the qualities' macro mAP.

    Chroma accuracy comes as the pitch class and as the release's column variant. The mAP is
    ``None`` when no quality occurs in references or hypotheses, because the release fails there.

    Qualities are one-hot encoded by a ``MultiLabelBinarizer`` fit on references and hypotheses
    together. A quality only ever predicted is thus a class with no positive reference and average
    precision 0, as in the release.
    """
    check_pairs(references, hypotheses)
    truth = [parse_note(text) for text in references]
    predicted = [parse_note(text) for text in hypotheses]
    true_pitch = np.array([note.pitch for note in truth])
    predicted_pitch = np.array([note.pitch for note in predicted])
    pitch_columns = MultiLabelBinarizer().fit_transform(
        [[pitch] for pitch in (*true_pitch, *predicted_pitch)]
    )
    true_column, predicted_column = np.split(pitch_columns.argmax(axis=1), 2)
    both_pitched = (true_pitch < MISSING) & (predicted_pitch < MISSING)
    return {
        "instrument_accuracy": float(
            accuracy_score([n.instrument for n in truth], [n.instrument for n in predicted])
        ),
        "velocity_accuracy": float(
            accuracy_score([n.velocity for n in truth], [n.velocity for n in predicted])
        ),
        "pitch_accuracy": float(accuracy_score(true_pitch, predicted_pitch)),
        "pitch_chroma_accuracy": float(
            np.mean(both_pitched & (true_pitch % 12 == predicted_pitch % 12))
        ),
        "pitch_chroma_accuracy_release": float(np.mean(true_column % 12 == predicted_column % 12)),
        "qualities_map": _qualities_map(
            [n.qualities for n in truth], [n.qualities for n in predicted]
        ),
    }


def _qualities_map(truth: list[tuple[str, ...]], predicted: list[tuple[str, ...]]) -> float | None:
    labels = MultiLabelBinarizer().fit_transform(truth + predicted)
    if labels.shape[1] == 0:
        return None
    with (
        warnings.catch_warnings()
    ):  # sklearn warns for the classes without a positive reference (AP 0, see above)
        warnings.filterwarnings("ignore", message="No positive class found in y_true")
        return float(
            average_precision_score(labels[: len(truth)], labels[len(truth) :], average="macro")
        )
