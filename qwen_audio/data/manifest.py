"""JSONL manifests: one training example per line, validated.

Validation errors name the file, line and field.

A line looks like::

    {"audio": "clips/a.wav", "offset": 0.0, "duration": 2.4, "task": "srwt", "audio_language": "en",
     "text_language": "en", "text": "the cat sleeps.",
     "words": [{"word": "the", "start": 0.0, "end": 0.14},
               {"word": "cat", "start": 0.14, "end": 0.48}, ...]}

Fields:
    ``audio``: a path. A relative path is read against the manifest's folder, so a corpus folder
    can be moved.
    ``offset``/``duration``: seconds, optional. They select a segment of a longer file.
    ``task``: a task name, checked against the ``tasks`` the reader is given.
    ``audio_language``/``text_language``: a language code, or ``null``/``"unknown"`` for none
    (e.g. the audio language of a sound).
    ``text``: the target the model learns to emit. For a question it is the answer.
    ``words``: SRWT words with start/end seconds from the clip's start.
    ``question`` and ``choices``: question answering.

Unknown fields are errors, so a misspelt optional field cannot be silently ignored.
"""

from __future__ import annotations

import json
import math
import os
import unicodedata
import warnings
from collections import Counter
from collections.abc import Container, Iterable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import soundfile

from qwen_audio.audio import SAMPLE_RATE
from qwen_audio.errors import InputError
from qwen_audio.lengths import MIN_SAMPLES
from qwen_audio.prompts import TASKS, TimedWord
from qwen_audio.text_normalize import release_normalize

# The language tags of the released tokenizer (``<|en|>`` ... ``<|zh_tr|>``).
LANGUAGES: frozenset[str] = frozenset({"en", "zh", "de", "es", "ko", "fr", "ja", "it", "zh_tr"})
NO_LANGUAGE = "unknown"  # a language field read as ``None``
TIME_TOLERANCE = 0.01  # seconds: word ends may pass the duration (and segments the file's end) by one timestamp step
MIN_SECONDS = MIN_SAMPLES / SAMPLE_RATE  # 30 ms, the shortest clip the encoder reads
MAX_SECONDS = (
    30.0  # the encoder's window; longer audio goes through long-form generation, not training
)


class ManifestError(InputError):
    """A manifest line that cannot be used.

    The message reads ``path:line: field: reason``.
    """

    def __init__(
        self,
        reason: str,
        *,
        field: str | None = None,
        path: str | None = None,
        line: int | None = None,
    ):
        self.reason, self.field, self.path, self.line = reason, field, path, line
        location = "" if path is None else f"{path}: " if line is None else f"{path}:{line}: "
        super().__init__(f"{location}{field + ': ' if field else ''}{reason}")

    def at(self, path: str, line: int) -> ManifestError:
        return ManifestError(self.reason, field=self.field, path=path, line=line)


@dataclass(frozen=True)
class ManifestEntry:
    """One example. Constructing it validates every field.

    So entries built in code obey the file format too.
    """

    audio: str
    task: str
    text: str
    audio_language: str | None
    text_language: str | None
    offset: float = 0.0
    duration: float | None = None
    words: tuple[TimedWord, ...] | None = None
    question: str | None = None
    choices: tuple[str, ...] | None = None
    source: str | None = field(
        default=None, compare=False, repr=False
    )  # ``file:line`` read from; not a field of it

    def __post_init__(self) -> None:
        for name in (
            "words",
            "choices",
        ):  # lists are accepted and stored as tuples, so entries stay hashable
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        for name in ("audio_language", "text_language"):
            if getattr(self, name) == NO_LANGUAGE:
                object.__setattr__(self, name, None)
        _require_str(self.audio, "audio", nonempty=True)
        _require_str(self.task, "task", nonempty=True)
        _require_str(self.text, "text")
        for name in ("audio_language", "text_language", "question"):
            if getattr(self, name) is not None:
                _require_str(getattr(self, name), name, nonempty=True)
        if not _is_number(self.offset) or self.offset < 0:
            raise ManifestError(
                f"must be a finite number >= 0, got {self.offset!r}", field="offset"
            )
        if self.duration is not None and (not _is_number(self.duration) or self.duration <= 0):
            raise ManifestError(
                f"must be a finite number > 0, got {self.duration!r}", field="duration"
            )
        if self.words is not None:
            self._check_words()
            self._check_spelling()
        if self.choices is not None:
            self._check_choices()

    def _check_words(self) -> None:
        if not isinstance(self.words, tuple):
            raise ManifestError(f"must be a list of words, got {self.words!r}", field="words")
        previous_end = 0.0
        for i, word in enumerate(self.words):
            field = f"words[{i}]"
            if not isinstance(word, TimedWord):
                raise ManifestError(f"must be a TimedWord, got {word!r}", field=field)
            _require_str(word.text, f"{field}.word", nonempty=True)
            for name in ("start", "end"):
                value = getattr(word, name)
                if not _is_number(value) or value < 0:
                    raise ManifestError(
                        f"must be a finite number >= 0, got {value!r}", field=f"{field}.{name}"
                    )
            if word.end < word.start:
                raise ManifestError(
                    f"ends at {word.end} before it starts at {word.start}", field=field
                )
            if word.start < previous_end:
                raise ManifestError(
                    f"starts at {word.start}, before the previous word ends at {previous_end} (words must be "
                    "in time order and not overlap)",
                    field=field,
                )
            if self.duration is not None and word.end > self.duration + TIME_TOLERANCE:
                raise ManifestError(
                    f"ends at {word.end}, after the clip's duration {self.duration}", field=field
                )
            previous_end = word.end

    def _check_spelling(self) -> None:
        """Check that the words spell ``text`` after the release's normalisation.

        The comparison is lower-cased and without punctuation. Words carry no punctuation. Chinese
        is compared by characters.
        """
        language = self.text_language or "en"
        spelled, text = (
            _spelling(t, language) for t in (" ".join(w.text for w in self.words), self.text)
        )
        if spelled != text:
            raise ManifestError(f"spell {spelled!r}, but text reads {text!r}", field="words")

    def _check_choices(self) -> None:
        choices = self.choices
        if (
            not isinstance(choices, tuple)
            or not choices
            or not all(isinstance(c, str) and c for c in choices)
        ):
            raise ManifestError(
                f"must be a non-empty list of non-empty strings, got {self.choices!r}",
                field="choices",
            )
        if self.question is None:
            raise ManifestError("given without a question", field="choices")
        if self.text not in self.choices:
            raise ManifestError(
                f"the answer {self.text!r} is not one of the choices {list(choices)}", field="text"
            )

    def to_json(self) -> dict[str, Any]:
        """The manifest line as a dict.

        Optional fields at their defaults are left out.
        """
        line: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "source" or value == f.default and f.name not in _REQUIRED:
                continue
            if f.name == "words":
                value = [{"word": w.text, "start": w.start, "end": w.end} for w in value]
            elif f.name == "choices":
                value = list(value)
            line[f.name] = value
        return line


def _spelling(text: str, language: str) -> str:
    text = "".join(
        c
        for c in release_normalize(text, language).lower()
        if not unicodedata.category(c).startswith("P")
    )
    return "".join(text.split()) if language == "zh" else " ".join(text.split())


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _require_str(value: Any, field: str, nonempty: bool = False) -> None:
    if not isinstance(value, str):
        raise ManifestError(f"must be a string, got {type(value).__name__} {value!r}", field=field)
    if nonempty and not value.strip():
        raise ManifestError("must not be empty", field=field)


_REQUIRED = ("audio", "task", "text", "audio_language", "text_language")
_KNOWN = tuple(f.name for f in fields(ManifestEntry) if f.name != "source")


def _parse_line(
    raw: str,
    folder: str,
    tasks: Container[str],
    languages: Container[str],
    check_audio: bool,
    source: str,
) -> ManifestEntry:
    try:
        line = json.loads(raw.rstrip("\r\n"))
    except json.JSONDecodeError as err:
        raise ManifestError(f"malformed JSON: {err.msg} (column {err.colno})", field=None) from None
    if not isinstance(line, dict):
        raise ManifestError(f"must be a JSON object, got {type(line).__name__}")
    for name in _REQUIRED:
        if name not in line:
            raise ManifestError("missing required field", field=name)
    for name in line:
        if name not in _KNOWN:
            raise ManifestError(f"unknown field (known: {', '.join(_KNOWN)})", field=name)
    if isinstance(line["audio"], str) and line["audio"]:
        line["audio"] = os.path.normpath(os.path.join(folder, os.path.expanduser(line["audio"])))
    if "words" in line:
        line["words"] = _parse_words(line["words"])
    entry = ManifestEntry(**line, source=source)
    if entry.task not in tasks:
        raise ManifestError(f"unknown task {entry.task!r}", field="task")
    for name in ("audio_language", "text_language"):
        language = getattr(entry, name)
        if language is not None and language not in languages:
            raise ManifestError(f"unknown language {language!r}", field=name)
    if check_audio:
        _check_audio_file(entry)
    return entry


def _parse_words(words: Any) -> tuple[TimedWord, ...]:
    if not isinstance(words, list):
        raise ManifestError(
            f"must be a list of {{word, start, end}} objects, got {type(words).__name__}",
            field="words",
        )
    parsed = []
    for i, word in enumerate(words):
        if not isinstance(word, dict) or set(word) != {"word", "start", "end"}:
            raise ManifestError(
                f"must be an object with exactly word, start, end; got {word!r}",
                field=f"words[{i}]",
            )
        parsed.append(TimedWord(word["word"], word["start"], word["end"]))
    return tuple(parsed)


def _check_audio_file(entry: ManifestEntry) -> None:
    """Check ``entry``'s audio file from its header only, without decoding.

    The file must exist and hold the segment. The segment must fit the front end (30 ms to 30 s)
    with every SRWT word inside it.
    """
    if not os.path.isfile(entry.audio):
        raise ManifestError(f"file not found: {entry.audio}", field="audio")
    try:
        info = soundfile.info(entry.audio)
    except (soundfile.LibsndfileError, RuntimeError) as err:
        raise ManifestError(f"cannot read {entry.audio}: {err}", field="audio") from None
    end = entry.offset + (entry.duration or 0.0)
    if end > info.duration + TIME_TOLERANCE:
        raise ManifestError(
            f"offset {entry.offset} + duration {entry.duration or 0.0} s runs past the end of {entry.audio} "
            f"({info.duration:.3f} s)",
            field="audio",
        )
    seconds = entry.duration if entry.duration is not None else info.duration - entry.offset
    if seconds < MIN_SECONDS:
        raise ManifestError(
            f"{entry.audio} gives a {seconds:.4f} s clip, shorter than the {MIN_SECONDS * 1000:.0f} ms "
            "the front end needs",
            field="audio",
        )
    if seconds > MAX_SECONDS + TIME_TOLERANCE:
        raise ManifestError(
            f"{entry.audio} gives a {seconds:.2f} s clip, past the encoder's {MAX_SECONDS:.0f} s "
            "window (cut it into segments with offset/duration)",
            field="audio",
        )
    for i, word in enumerate(entry.words or ()):
        if word.end > seconds + TIME_TOLERANCE:
            raise ManifestError(
                f"ends at {word.end}, after the clip's end at {seconds:.3f} s", field=f"words[{i}]"
            )


def iter_manifest(
    path: str | os.PathLike,
    *,
    tasks: Container[str] = TASKS,
    languages: Container[str] = LANGUAGES,
    check_audio: bool = False,
    on_error: Literal["raise", "skip"] = "raise",
    shard: tuple[int, int] = (0, 1),
) -> Iterator[ManifestEntry]:
    """Stream the entries of a JSONL manifest, one line at a time.

    Reading line by line serves corpora too large to hold in memory.

    ``tasks``/``languages`` are the accepted names, in any container (a set, a registry dict).
    ``check_audio`` also requires each audio file to exist and to be long enough for its segment. It
    reads the file's header only. ``on_error="raise"`` raises a :class:`ManifestError` at the first
    bad line. ``on_error="skip"`` skips bad lines. When the file is done, it then warns once with
    how many were skipped and for which fields. Blank lines are ignored. ``shard=(index, count)``
    keeps only lines ``index, index + count, ...`` (numbered from 0) and parses no other. ``count``
    readers thus split a file between them.
    """
    index, count = shard
    if not 0 <= index < count:
        raise ValueError(f"shard must be (index, count) with 0 <= index < count, got {shard}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    name = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(name))
    skipped: Counter[str] = Counter()
    num_lines = 0
    with open(name, encoding="utf-8") as file:
        for number, raw in enumerate(file, start=1):
            if (number - 1) % count != index or not raw.strip():
                continue
            num_lines += 1
            try:
                yield _parse_line(raw, folder, tasks, languages, check_audio, f"{name}:{number}")
            except ManifestError as err:
                if on_error == "raise":
                    raise err.at(name, number) from None
                skipped[err.field or "json"] += 1
    if num_lines == 0 and index == 0:
        raise ManifestError("no entries: the file is empty", path=name)
    if skipped:
        counts = ", ".join(f"{count} {field}" for field, count in sorted(skipped.items()))
        warnings.warn(
            f"skipped {sum(skipped.values())} of {num_lines} lines in {name} ({counts})",
            stacklevel=2,
        )


def read_manifest(
    path: str | os.PathLike,
    *,
    tasks: Container[str] = TASKS,
    languages: Container[str] = LANGUAGES,
    check_audio: bool = False,
    on_error: Literal["raise", "skip"] = "raise",
) -> list[ManifestEntry]:
    """All entries of a JSONL manifest.

    See :func:`iter_manifest` for the options.
    """
    return list(
        iter_manifest(
            path, tasks=tasks, languages=languages, check_audio=check_audio, on_error=on_error
        )
    )


def write_manifest(path: str | os.PathLike, entries: Iterable[ManifestEntry]) -> None:
    """Write ``entries`` one JSON object a line.

    ``audio`` is written as stored (relative paths resolve against the folder).
    """
    with open(path, "w", encoding="utf-8") as file:
        for entry in entries:
            file.write(json.dumps(entry.to_json(), ensure_ascii=False) + "\n")
