"""One converted split: its manifest, its audio files, and bad rows raised or skipped as bad
manifest lines are."""

from __future__ import annotations

import json
import os
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Literal

from qwen_audio.data.manifest import ManifestEntry, ManifestError, _check_audio_file


class SplitWriter:
    """Writes ``OUT/<name>.jsonl`` (and audio files under ``OUT/audio/<name>/``), atomically on
    :meth:`close`.

    :meth:`add` builds a row's entries. With ``on_error="raise"``, a :class:`ManifestError` is
    raised naming ``path:line``. With ``"skip"``, it is counted and the row skipped, with one
    warning at the end, as :func:`~qwen_audio.data.manifest.iter_manifest` does. Every entry is
    checked as training checks it, its audio file's header included.
    """

    def __init__(
        self, out: str | os.PathLike, name: str, on_error: Literal["raise", "skip"] = "raise"
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.folder, self.name, self.on_error = Path(out), name, on_error
        self.manifest = self.folder / f"{name}.jsonl"
        self.audio_folder = self.folder / "audio" / name
        self.audio_folder.mkdir(parents=True, exist_ok=True)
        self._partial = self.manifest.with_suffix(".jsonl.partial")
        self._file = open(self._partial, "w", encoding="utf-8")
        self.rows, self.lines, self.skipped = 0, 0, Counter()

    def write_audio(self, name: str, data: bytes) -> str:
        """Store an audio file's bytes and return its path relative to the manifest's folder."""
        path = self.audio_folder / name
        path.write_bytes(data)
        return os.path.relpath(path, self.folder)

    def add(self, entries: Callable[[], list[ManifestEntry]], path: str, line: int) -> None:
        """Convert one row (``line`` of ``path``) into manifest lines."""
        self.rows += 1
        try:
            built = entries()
            for entry in built:
                _check_audio_file(
                    entry if os.path.isabs(entry.audio) else _absolute(entry, self.folder)
                )
        except ManifestError as err:
            if self.on_error == "raise":
                raise err.at(path, line) from None
            self.skipped[err.field or "row"] += 1
            return
        for entry in built:
            self._file.write(json.dumps(entry.to_json(), ensure_ascii=False) + "\n")
            self.lines += 1

    def close(self) -> Path:
        """Finish the manifest and return its path.

        It warns with the count of skipped rows."""
        self._file.close()
        if self.lines == 0:
            raise ManifestError(
                f"no usable row of {self.rows}; skipped {dict(self.skipped)}",
                path=str(self.manifest),
            )
        os.replace(self._partial, self.manifest)
        if self.skipped:
            counts = ", ".join(f"{n} {field}" for field, n in sorted(self.skipped.items()))
            warnings.warn(
                f"skipped {sum(self.skipped.values())} of {self.rows} rows "
                f"for {self.manifest} ({counts})",
                stacklevel=2,
            )
        return self.manifest

    def __enter__(self) -> SplitWriter:
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is not None:
            self._file.close()
            self._partial.unlink(missing_ok=True)


def _absolute(entry: ManifestEntry, folder: Path) -> ManifestEntry:
    return replace(entry, audio=str(folder / entry.audio))
