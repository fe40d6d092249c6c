from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import soundfile

from qwen_audio.data.manifest import (
    ManifestEntry,
    ManifestError,
    iter_manifest,
    read_manifest,
    write_manifest,
)
from qwen_audio.prompts import TimedWord

GOOD = {
    "audio": "a.wav",
    "task": "asr",
    "text": "hello world",
    "audio_language": "en",
    "text_language": "en",
}
KNOWN_FIELDS = (
    "audio, task, text, audio_language, text_language, offset, duration, words, question, choices"
)


def write_lines(path, lines):
    path.write_text(
        "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    )
    return path


def good(**changes):
    line = dict(GOOD, **changes)
    return {k: v for k, v in line.items() if v is not ...}


def test_reads_hand_written_lines(tmp_path):
    srwt_words = [
        {"word": "hello", "start": 0.1, "end": 0.5},
        {"word": "world", "start": 0.5, "end": 0.9},
    ]
    (tmp_path / "sub").mkdir()
    path = write_lines(
        tmp_path / "sub" / "m.jsonl",
        [
            good(duration=1.5),
            "",
            good(audio="/data/b.flac", offset=2.0, duration=1.0, task="srwt", words=srwt_words),
            good(
                audio="../c.wav",
                task="aqa",
                text="two",
                audio_language="unknown",
                question="how many?",
                choices=["one", "two"],
            ),
        ],
    )
    first, second, third = read_manifest(path)
    assert first == ManifestEntry(
        str(tmp_path / "sub" / "a.wav"), "asr", "hello world", "en", "en", duration=1.5
    )
    assert second.audio == "/data/b.flac" and second.offset == 2.0 and second.duration == 1.0
    assert second.words == (TimedWord("hello", 0.1, 0.5), TimedWord("world", 0.5, 0.9))
    assert third.audio == str(tmp_path / "c.wav")
    assert (
        third.audio_language is None
        and third.question == "how many?"
        and third.choices == ("one", "two")
    )
    assert third.offset == 0.0 and third.duration is None and third.words is None


BAD_LINES = [
    (
        '{"audio": "a.wav",',
        None,
        "malformed JSON: Expecting property name enclosed in double quotes (column 19)",
    ),
    ("[1, 2]", None, "must be a JSON object, got list"),
    (good(text=...), "text", "missing required field"),
    (good(audio=""), "audio", "must not be empty"),
    (good(text=3), "text", "must be a string, got int 3"),
    (good(duration="1.5"), "duration", "must be a finite number > 0, got '1.5'"),
    (good(duration=-1.0), "duration", "must be a finite number > 0, got -1.0"),
    (good(duration=True), "duration", "must be a finite number > 0, got True"),
    (
        '{"audio": "a.wav", "task": "asr", "text": "x", "audio_language": "en", '
        '"text_language": "en", "duration": NaN}',
        "duration",
        "must be a finite number > 0, got nan",
    ),
    (good(offset=-0.5), "offset", "must be a finite number >= 0, got -0.5"),
    (good(task="asrr"), "task", "unknown task 'asrr'"),
    (good(duraton=2.0), "duraton", f"unknown field (known: {KNOWN_FIELDS})"),
    (good(audio_language="xx"), "audio_language", "unknown language 'xx'"),
    (good(words={"word": "a"}), "words", "must be a list of {word, start, end} objects, got dict"),
    (
        good(words=[{"word": "a", "start": 0.0}]),
        "words[0]",
        "must be an object with exactly word, start, end; got {'word': 'a', 'start': 0.0}",
    ),
    (
        good(words=[{"word": "a", "start": 0.3, "end": 0.1}]),
        "words[0]",
        "ends at 0.1 before it starts at 0.3",
    ),
    (
        good(
            words=[{"word": "a", "start": 0.0, "end": 0.5}, {"word": "b", "start": 0.2, "end": 0.6}]
        ),
        "words[1]",
        "starts at 0.2, before the previous word ends at 0.5 (words must be in time order and not overlap)",
    ),
    (
        good(words=[{"word": "a", "start": -0.1, "end": 0.5}]),
        "words[0].start",
        "must be a finite number >= 0, got -0.1",
    ),
    (good(words=[{"word": "", "start": 0.0, "end": 0.5}]), "words[0].word", "must not be empty"),
    (
        good(duration=2.0, words=[{"word": "a", "start": 0.0, "end": 2.5}]),
        "words[0]",
        "ends at 2.5, after the clip's duration 2.0",
    ),
    (
        good(text="three", question="how many?", choices=["one", "two"]),
        "text",
        "the answer 'three' is not one of the choices ['one', 'two']",
    ),
    (good(text="one", choices=["one", "two"]), "choices", "given without a question"),
    (
        good(question="q?", choices="one"),
        "choices",
        "must be a non-empty list of non-empty strings, got 'one'",
    ),
]


@pytest.mark.parametrize("line, field, reason", BAD_LINES)
def test_bad_line_error_names_file_line_and_field(tmp_path, line, field, reason):
    path = write_lines(tmp_path / "m.jsonl", [good(), "", line])
    with pytest.raises(ManifestError) as caught:
        read_manifest(path)
    prefix = f"{path}:3: " + (f"{field}: " if field else "")
    assert str(caught.value) == prefix + reason
    assert (caught.value.path, caught.value.line, caught.value.field) == (str(path), 3, field)
    assert isinstance(caught.value, ValueError)


def test_check_audio_missing_file_and_segment_past_end(tmp_path):
    soundfile.write(tmp_path / "one_second.wav", np.zeros(16000, np.float32), 16000)
    path = write_lines(
        tmp_path / "m.jsonl",
        [
            good(audio="one_second.wav", offset=0.5, duration=0.5),
            good(audio="missing.wav"),
            good(audio="one_second.wav", offset=0.5, duration=1.0),
        ],
    )
    assert len(read_manifest(path)) == 3  # not checked by default
    with pytest.raises(ManifestError) as caught:
        read_manifest(path, check_audio=True)
    assert str(caught.value) == f"{path}:2: audio: file not found: {tmp_path / 'missing.wav'}"
    with pytest.warns(UserWarning, match=r"skipped 2 of 3 lines .* \(2 audio\)"):
        entries = read_manifest(path, check_audio=True, on_error="skip")
    assert [e.duration for e in entries] == [0.5]
    write_lines(path, [good(audio="one_second.wav", offset=0.5, duration=1.0)])
    with pytest.raises(ManifestError) as caught:
        read_manifest(path, check_audio=True)
    assert str(caught.value) == (
        f"{path}:1: audio: offset 0.5 + duration 1.0 s runs past the end of {tmp_path / 'one_second.wav'} (1.000 s)"
    )


def test_skip_counts_bad_lines_by_field(tmp_path):
    path = write_lines(
        tmp_path / "m.jsonl", [good(), "{oops", good(duration=-1), good(text="b"), good(duration=0)]
    )
    with pytest.warns(UserWarning) as caught:
        entries = read_manifest(path, on_error="skip")
    assert [e.text for e in entries] == ["hello world", "b"]
    assert [str(w.message) for w in caught] == [
        f"skipped 3 of 5 lines in {path} (2 duration, 1 json)"
    ]
    with pytest.raises(ValueError, match="on_error must be 'raise' or 'skip', got 'ignore'"):
        read_manifest(path, on_error="ignore")


def test_task_registry_hook(tmp_path):
    path = write_lines(tmp_path / "m.jsonl", [good(task="chat")])
    with pytest.raises(ManifestError, match="task: unknown task 'chat'"):
        read_manifest(path)
    registry = {"chat": object()}  # e.g. the prompt registry: any container of names
    assert read_manifest(path, tasks=registry)[0].task == "chat"
    with pytest.raises(ManifestError, match="task: unknown task 'asr'"):
        read_manifest(write_lines(tmp_path / "n.jsonl", [good()]), tasks=registry)


def test_iter_manifest_streams_and_fails_at_the_bad_line(tmp_path):
    path = write_lines(tmp_path / "m.jsonl", [good(text="1"), good(text="2"), good(duration=0)])
    stream = iter_manifest(path)
    assert next(stream).text == "1" and next(stream).text == "2"  # yielded before line 3 is read
    with pytest.raises(ManifestError, match=r"m.jsonl:3: duration"):
        next(stream)


def test_write_then_read_round_trip(tmp_path):
    entries = [
        ManifestEntry(
            "clips/a.wav",
            "srwt",
            "hi you",
            "en",
            "en",
            duration=1.0,
            words=(TimedWord("hi", 0.0, 0.4), TimedWord("you", 0.45, 0.9)),
        ),
        ManifestEntry(
            "clips/b.wav",
            "aqa",
            "yes",
            None,
            "en",
            offset=0.25,
            question="any beeps?",
            choices=("yes", "no"),
        ),
        ManifestEntry("clips/c.wav", "asr", "你好", "zh", "zh"),
    ]
    path = tmp_path / "m.jsonl"
    write_manifest(path, entries)
    assert json.loads(path.read_text().splitlines()[2]) == {
        "audio": "clips/c.wav",
        "task": "asr",
        "text": "你好",
        "audio_language": "zh",
        "text_language": "zh",
    }
    assert read_manifest(path) == [
        dataclasses.replace(e, audio=str(tmp_path / e.audio)) for e in entries
    ]


def test_entries_built_in_code_are_validated():
    with pytest.raises(ManifestError) as caught:
        ManifestEntry("a.wav", "asr", "x", "en", "en", duration=0.0)
    assert str(caught.value) == "duration: must be a finite number > 0, got 0.0"
    entry = ManifestEntry("a.wav", "srwt", "x", "unknown", "en", words=[TimedWord("x", 0.0, 0.2)])
    assert entry.words == (TimedWord("x", 0.0, 0.2),) and hash(
        entry
    )  # lists stored as tuples: hashable
    assert entry.audio_language is None


def _clip_manifest(tmp_path, seconds: float, **fields) -> str:
    import json as _json

    import numpy as _np
    import soundfile as _sf

    _sf.write(tmp_path / "c.wav", _np.full(int(seconds * 16000), 0.1, _np.float32), 16000)
    line = {
        "audio": "c.wav",
        "task": "asr",
        "audio_language": "en",
        "text_language": "en",
        "text": "one two",
        **fields,
    }
    path = tmp_path / "m.jsonl"
    path.write_text(_json.dumps(line) + "\n")
    return str(path)


@pytest.mark.parametrize(
    "seconds, fields, field, reason",
    [
        (0.02, {}, "audio", "0.0200 s clip, shorter than the 30 ms the front end needs"),
        (31.0, {}, "audio", "31.00 s clip, past the encoder's 30 s window"),
        (
            1.0,
            {
                "task": "srwt",
                "words": [
                    {"word": "one", "start": 0.0, "end": 0.4},
                    {"word": "two", "start": 0.5, "end": 1.6},
                ],
            },
            "words[1]",
            "ends at 1.6, after the clip's end at 1.000 s",
        ),
        (
            1.0,
            {
                "task": "srwt",
                "text": "one three.",
                "words": [
                    {"word": "one", "start": 0.0, "end": 0.4},
                    {"word": "two", "start": 0.5, "end": 0.9},
                ],
            },
            "words",
            "spell 'one two', but text reads 'one three'",
        ),
    ],
)
def test_clips_and_words_are_checked_when_the_manifest_is_read(
    tmp_path, seconds, fields, field, reason
):
    path = _clip_manifest(tmp_path, seconds, **fields)
    with pytest.raises(ManifestError) as info:
        read_manifest(path, check_audio=True)
    assert str(info.value).startswith(f"{path}:1: {field}: ") and reason in str(info.value)
    with pytest.warns(UserWarning, match=f"skipped 1 of 1 lines in {path}"):
        assert read_manifest(path, check_audio=True, on_error="skip") == []


def test_words_spell_the_text_after_the_release_normalisation(tmp_path):
    words = [{"word": "One", "start": 0.0, "end": 0.4}, {"word": "two", "start": 0.5, "end": 0.9}]
    path = _clip_manifest(tmp_path, 1.0, task="srwt", text="one, two.", words=words)
    assert len(read_manifest(path, check_audio=True)) == 1


def test_an_empty_manifest_is_named(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(ManifestError, match=f"^{path}: no entries: the file is empty$"):
        read_manifest(path)
