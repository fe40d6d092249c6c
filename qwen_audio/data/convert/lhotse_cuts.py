"""lhotse CutSet manifests (``.jsonl`` / ``.jsonl.gz``) -> a manifest: each supervision becomes an
ASR line, and one with a word alignment also an SRWT line.

Audio stays where the recording keeps it: a file source is referenced (``offset``/``duration`` cut
the supervision out of it), an in-memory source is written to ``OUT/audio/<name>/``. A bad cut is
reported as ``CUTS:line: supervisions[i].field: reason`` (lines numbered from 1).
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Literal

from lhotse import CutSet

from qwen_audio.data.convert.fields import Fields
from qwen_audio.data.convert.writer import SplitWriter
from qwen_audio.data.manifest import ManifestEntry, ManifestError
from qwen_audio.prompts import TimedWord


def convert(
    src: str | os.PathLike,
    out: str | os.PathLike,
    fields: Fields,
    on_error: Literal["raise", "skip"] = "raise",
) -> Path:
    """Write ``OUT/<name>.jsonl`` (``name``: the file's name without ``.jsonl[.gz]``) and return
    it."""
    name = Path(src).name.removesuffix(".gz").removesuffix(".jsonl")
    with SplitWriter(out, name, on_error) as writer:
        for line, cut in enumerate(CutSet.from_jsonl_lazy(src), start=1):
            writer.add(partial(_entries, cut, fields, writer), os.fspath(src), line)
        return writer.close()


def _audio(cut, writer: SplitWriter) -> tuple[str, float]:
    """The cut's audio file as a manifest path, and where the cut starts in it (seconds)."""
    recording = getattr(cut, "recording", None)
    if recording is None or len(recording.sources) != 1:
        raise ManifestError("needs a recording with exactly one audio source", field="recording")
    source = recording.sources[0]
    if source.type == "file":
        return os.path.abspath(source.source), cut.start
    if source.type == "memory":
        return writer.write_audio(f"{recording.id}.audio", source.source), cut.start
    raise ManifestError(
        f"source type {source.type!r}: convert only file or memory sources", field="recording"
    )


def _entries(cut, fields: Fields, writer: SplitWriter) -> list[ManifestEntry]:
    audio, start = _audio(cut, writer)
    entries = []
    for i, supervision in enumerate(cut.supervisions):
        name = f"supervisions[{i}]"
        try:
            language = fields.language_code(
                supervision.language or fields.default_language, "language"
            )
            common = dict(
                audio=audio,
                text=supervision.text,
                audio_language=language,
                text_language=language,
                offset=round(start + supervision.start, 4),
                duration=round(supervision.duration, 4),
            )
            entries.append(ManifestEntry(task=fields.default_task, **common))
            alignment = (supervision.alignment or {}).get(fields.words or "word")
            if alignment:
                words = [
                    TimedWord(
                        a.symbol,
                        round(max(a.start - supervision.start, 0.0), 3),
                        round(a.end - supervision.start, 3),
                    )
                    for a in alignment
                ]
                entries.append(ManifestEntry(task="srwt", words=words, **common))
        except ManifestError as err:
            raise ManifestError(
                err.reason, field=f"{name}.{err.field}" if err.field else name
            ) from None
    if not entries:
        raise ManifestError("no supervision", field="supervisions")
    return entries
