"""Hugging Face ``datasets`` -> manifests: a ``save_to_disk`` folder, or parquet files, with an
``Audio`` column.

The audio column is read undecoded (``Audio(decode=False)``): each row's encoded bytes are written
as they are to ``OUT/audio/<split>/<row>.<format>``, so nothing is re-encoded and no decoder beyond
soundfile is needed. A bad row is reported as ``SRC[split]:row: column: reason`` (rows numbered from
0, as ``dataset[split][row]`` reads them).
"""

from __future__ import annotations

import io
import os
from functools import partial
from pathlib import Path
from typing import Any, Literal

import datasets
import soundfile

from qwen_audio.data.convert.fields import Fields
from qwen_audio.data.convert.writer import SplitWriter
from qwen_audio.data.manifest import ManifestEntry, ManifestError
from qwen_audio.prompts import TASKS, TimedWord


def load(src: str | os.PathLike) -> datasets.DatasetDict:
    """The splits of a ``save_to_disk`` folder (a lone ``Dataset`` is split ``train``), or of
    parquet files: one file, or a folder whose file names say their split
    (``train-00000-of-00002.parquet``, ``test.parquet``)."""
    src = os.fspath(src)
    if os.path.isdir(src) and any(
        os.path.isfile(os.path.join(src, f)) for f in ("dataset_dict.json", "state.json")
    ):
        loaded = datasets.load_from_disk(src)
        return (
            loaded
            if isinstance(loaded, datasets.DatasetDict)
            else datasets.DatasetDict(train=loaded)
        )
    if os.path.isfile(src) and src.endswith(".parquet"):
        return datasets.load_dataset("parquet", data_files={"train": src})
    if os.path.isdir(src):
        return datasets.load_dataset(src)
    raise FileNotFoundError(f"{src}: neither a save_to_disk folder nor parquet files")


def convert(
    src: str | os.PathLike,
    out: str | os.PathLike,
    fields: Fields,
    *,
    splits: list[str] | None = None,
    on_error: Literal["raise", "skip"] = "raise",
) -> dict[str, Path]:
    """Write ``OUT/<split>.jsonl`` for each split (all, or ``splits``); returns ``{split:
    manifest}``."""
    loaded = load(src)
    manifests = {}
    for split in splits or list(loaded):
        if split not in loaded:
            raise ValueError(f"{src}: no split {split!r} (splits: {list(loaded)})")
        table = loaded[split]
        columns = [
            fields.audio,
            fields.text,
            fields.language,
            fields.text_language,
            fields.task,
            fields.words,
        ]
        missing = [c for c in columns if c is not None and c not in table.column_names]
        if missing:
            raise ValueError(f"{src}[{split}]: no column {missing} (columns: {table.column_names})")
        table = table.cast_column(fields.audio, datasets.Audio(decode=False))
        with SplitWriter(out, split, on_error) as writer:
            for index, row in enumerate(table):
                writer.add(partial(_entries, row, index, fields, writer), f"{src}[{split}]", index)
            manifests[split] = writer.close()
    return manifests


def _entries(
    row: dict[str, Any], index: int, fields: Fields, writer: SplitWriter
) -> list[ManifestEntry]:
    audio = _audio(row[fields.audio], index, fields.audio, writer)
    text = row[fields.text]
    language = (
        fields.language_code(row[fields.language], fields.language)
        if fields.language
        else fields.language_code(fields.default_language, "default_language")
    )
    text_language = (
        fields.language_code(row[fields.text_language], fields.text_language)
        if fields.text_language
        else language
    )
    task = row[fields.task] if fields.task else fields.default_task
    if task not in TASKS:
        raise ManifestError(f"unknown task {task!r}", field=fields.task)
    duration = _duration(audio, writer.folder, fields.audio)
    entry = _entry(
        fields.text,
        audio=audio,
        task=task,
        text=text,
        audio_language=language,
        text_language=text_language,
        duration=duration,
    )
    words = row[fields.words] if fields.words else None
    if not words:
        return [entry]
    return [
        entry,
        _entry(
            fields.words,
            audio=audio,
            task="srwt",
            text=text,
            audio_language=language,
            text_language=text_language,
            duration=duration,
            words=_words(words, fields.words),
        ),
    ]


def _entry(column: str, **values: Any) -> ManifestEntry:
    """A validated entry; an error in ``text`` or ``words`` names the column it came from."""
    try:
        return ManifestEntry(**values)
    except ManifestError as err:
        name = (
            column
            if err.field in ("text", "words") or (err.field or "").startswith("words[")
            else err.field
        )
        raise ManifestError(err.reason, field=name) from None


def _audio(value: Any, index: int, column: str, writer: SplitWriter) -> str:
    """The row's audio as a path for the manifest: embedded bytes are written out, a file path is
    kept."""
    if not isinstance(value, dict) or not (value.get("bytes") or value.get("path")):
        raise ManifestError(f"holds no audio bytes or path: {value!r:.80}", field=column)
    if not value.get("bytes"):
        return os.path.abspath(value["path"])
    try:
        kind = soundfile.info(io.BytesIO(value["bytes"])).format.lower()
    except (soundfile.LibsndfileError, RuntimeError) as err:
        raise ManifestError(f"audio bytes do not decode: {err}", field=column) from None
    return writer.write_audio(f"{index:08d}.{kind}", value["bytes"])


def _duration(audio: str, folder: Path, column: str) -> float:
    try:
        return round(soundfile.info(os.path.join(folder, audio)).duration, 4)
    except (soundfile.LibsndfileError, RuntimeError) as err:
        raise ManifestError(f"cannot read {audio}: {err}", field=column) from None


def _words(value: Any, column: str) -> list[TimedWord]:
    """Word timings as a list of ``{word, start, end}``, or as ``datasets``' columns of a list of
    structs (``{word: [...], start: [...], end: [...]}``)."""
    if isinstance(value, dict) and set(value) == {"word", "start", "end"}:
        value = [dict(zip(value, items)) for items in zip(*value.values())]
    if not isinstance(value, list) or not all(
        isinstance(w, dict) and set(w) == {"word", "start", "end"} for w in value
    ):
        raise ManifestError(
            f"must be a list of {{word, start, end}}, got {value!r:.80}", field=column
        )
    return [TimedWord(w["word"], w["start"], w["end"]) for w in value]
