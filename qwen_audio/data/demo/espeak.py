"""Speech synthesis with word timings via the libespeak-ng bundled in the ``espeakng-loader`` wheel.

It uses ctypes rather than a TTS package for two reasons. The wheel ships the library and its voices
(English ``en``, Mandarin ``cmn``, ...) with no system install and no download. The C API reports,
for every word, the millisecond at which the synthesiser starts it. Those word events are the ground
truth the demo corpus needs for word-level timestamps (SRWT).

The library seeds its noise from the clock (we fix the seed). It also keeps oscillator and
pitch-flutter state from one utterance to the next, and no API call resets it. So the same call
gives slightly different samples depending on what was synthesised before in the process. Therefore
:func:`synthesize_files` renders a list of utterances in a fresh interpreter (this file run as a
script). This makes its output bit-identical run after run.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import subprocess
import sys
import threading
import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import espeakng_loader
import numpy as np
import soundfile
import torch

from qwen_audio.audio import resampler
from qwen_audio.whisper_mel import SAMPLE_RATE

DEFAULT_RATE = 175  # words per minute, espeak-ng's default
DEFAULT_PITCH = 50  # 0..100, espeak-ng's default
SILENCE_DB = (
    -50.0
)  # a word ends at its last sample louder than this, relative to the utterance's peak
# A space between two word characters is sent as a no-break space: otherwise espeak-ng reads its
# multi-word dictionary entries ("in the", "on the", "at once", ...) as one word with one event.
# Spaces after punctuation stay, so clause pauses are kept. The swap is one character for one, so
# event positions still index ``text``.
_INNER_SPACE = re.compile(r"(?<=\w) (?=\w)")

# speak_lib.h constants
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = (
    0x8000  # return an error instead of calling exit() when the data folder is missing
)
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE = 1
_PARAM_PITCH = 3


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    """The C struct ``espeak_EVENT``.

    ``text_position`` is 1-based in characters, ``audio_position`` in milliseconds.
    """

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


class _Engine:
    """The process-wide libespeak-ng instance (the library is a singleton), used under a lock."""

    def __init__(self) -> None:
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        data_path = espeakng_loader.get_data_path()
        self.sample_rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), _INITIALIZE_DONT_EXIT
        )
        if self.sample_rate <= 0:
            raise RuntimeError(f"libespeak-ng failed to initialise with data folder {data_path}")
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_ng_SetRandSeed(0)  # the library seeds its noise from the clock otherwise
        self._lib = lib
        self._chunks: list[np.ndarray] = []
        self._word_events: list[tuple[int, int]] = []  # (character index, milliseconds)
        self._callback = _SynthCallback(
            self._receive
        )  # keep a reference: the library holds a raw pointer
        lib.espeak_SetSynthCallback(self._callback)
        self.lock = threading.Lock()

    def _receive(self, wav, num_samples, events) -> int:
        if wav and num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            if events[i].type == _EVENT_WORD:
                self._word_events.append((events[i].text_position - 1, events[i].audio_position))
            i += 1
        return 0  # 0 = continue synthesis

    def speak(
        self, text: str, voice: str, rate: int, pitch: int
    ) -> tuple[np.ndarray, list[tuple[int, int]]]:
        if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"unknown espeak-ng voice {voice!r}")
        self._lib.espeak_SetParameter(_PARAM_RATE, rate, 0)
        self._lib.espeak_SetParameter(_PARAM_PITCH, pitch, 0)
        self._chunks, self._word_events = [], []
        encoded = text.encode()
        status = self._lib.espeak_Synth(
            encoded, len(encoded) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
        )
        if status != 0:
            raise RuntimeError(f"espeak_Synth failed with status {status} for text {text!r}")
        samples = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        return samples.astype(np.int16, copy=False), self._word_events


_engine: _Engine | None = None
_engine_lock = threading.Lock()


def _get_engine() -> _Engine:
    global _engine
    with _engine_lock:
        if _engine is None:
            _engine = _Engine()
        return _engine


def _strip_punctuation(span: str) -> str:
    """Drop spaces and punctuation around a word ("fox," -> "fox"), keeping inner ones ("don't")."""
    start, end = 0, len(span)
    while start < end and unicodedata.category(span[start])[0] in "PZ":
        start += 1
    while end > start and unicodedata.category(span[end - 1])[0] in "PZ":
        end -= 1
    return span[start:end]


def _word_timings(
    text: str, samples: np.ndarray, sample_rate: int, events: list[tuple[int, int]]
) -> list[tuple[str, float, float]]:
    """Turn word events into ``(word, start_s, end_s)``.

    A word is the text from its event's character to the next event's, without edge punctuation.
    Because espeak-ng emits one event per dictionary word, a Mandarin word such as 很好 spans
    several characters. A word starts at its event. It ends at its last sample above ``SILENCE_DB``
    before the next word starts (or the audio ends). So a pause after a comma is not counted as part
    of the word.
    """
    magnitude = np.abs(samples.astype(np.float32))  # in float: abs(int16 -32768) overflows
    loud = magnitude > magnitude.max(initial=0) * 10 ** (SILENCE_DB / 20)
    words = []
    for k, (char_index, start_ms) in enumerate(events):
        next_char, next_ms = events[k + 1] if k + 1 < len(events) else (len(text), None)
        word = _strip_punctuation(text[char_index:next_char])
        if not word:
            continue
        first = min(round(start_ms * sample_rate / 1000), len(samples))
        last = (
            len(samples)
            if next_ms is None
            else min(round(next_ms * sample_rate / 1000), len(samples))
        )
        loud_indices = np.flatnonzero(loud[first:last])
        end_sample = first + (loud_indices[-1] + 1 if loud_indices.size else 0)
        words.append((word, first / sample_rate, int(end_sample) / sample_rate))
    return words


def synthesize(
    text: str, voice: str = "en", rate: int = DEFAULT_RATE, pitch: int = DEFAULT_PITCH
) -> tuple[np.ndarray, int, list[tuple[str, float, float]]]:
    """Speak ``text`` -> ``(int16 samples, sample_rate, [(word, start_s, end_s), ...])``.

    ``voice`` is an espeak-ng voice name, optionally with a variant (``"en"``, ``"en+f2"``,
    ``"cmn+m3"``). ``rate`` is in words per minute (80..450). ``pitch`` is 0..100. The sample rate
    is the library's, 22,050 Hz.
    """
    if not text.strip():
        raise ValueError("text to synthesize is empty")
    if not 80 <= rate <= 450:
        raise ValueError(f"rate must be 80..450 words per minute, got {rate}")
    if not 0 <= pitch <= 100:
        raise ValueError(f"pitch must be 0..100, got {pitch}")
    engine = _get_engine()
    with engine.lock:
        samples, events = engine.speak(_INNER_SPACE.sub("\u00a0", text), voice, rate, pitch)
    return samples, engine.sample_rate, _word_timings(text, samples, engine.sample_rate, events)


@dataclass(frozen=True)
class SpeechJob:
    """One utterance for :func:`synthesize_files`, written as a 16-bit wav at ``path``.

    ``silence_before`` and ``silence_after`` seconds of silence go around the speech. espeak-ng
    itself leaves almost none."""

    text: str
    path: str
    voice: str = "en"
    rate: int = DEFAULT_RATE
    pitch: int = DEFAULT_PITCH
    silence_before: float = 0.0
    silence_after: float = 0.0


def synthesize_files(jobs: Sequence[SpeechJob]) -> list[list[tuple[str, float, float]]]:
    """Render ``jobs`` in order in a fresh interpreter and return each job's word timings.

    The files are written at the model's 16 kHz, so loading them needs no resampling. At the
    synthesiser's 22,050 Hz, resampling on every load takes 70 % of the demo DataLoader's time.

    The fresh process starts libespeak-ng from its initial state. So the same jobs give the same
    files, whatever this process synthesised before (see the module docstring).
    """
    request = json.dumps([asdict(job) for job in jobs])
    result = subprocess.run(
        [sys.executable, os.path.abspath(__file__)],
        input=request,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"speech synthesis subprocess failed:\n{result.stderr}")
    return [
        [(word, start, end) for word, start, end in words] for words in json.loads(result.stdout)
    ]


def _serve() -> None:
    """Script entry point of :func:`synthesize_files`.

    It reads JSON jobs on stdin and writes JSON word timings on stdout.
    """
    timings = []
    for job in json.load(sys.stdin):
        samples, sample_rate, words = synthesize(
            job["text"], job["voice"], job["rate"], job["pitch"]
        )
        audio = resampler(sample_rate, SAMPLE_RATE)(
            torch.from_numpy(samples.astype(np.float32) / 32768)
        ).numpy()
        before, after = (
            round(job[side] * SAMPLE_RATE) for side in ("silence_before", "silence_after")
        )
        soundfile.write(job["path"], np.pad(audio, (before, after)), SAMPLE_RATE, subtype="PCM_16")
        shift = before / SAMPLE_RATE
        timings.append([(word, start + shift, end + shift) for word, start, end in words])
    json.dump(timings, sys.stdout)


if __name__ == "__main__":
    _serve()
