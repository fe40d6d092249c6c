"""Manifests -> litdata shards: chunks of a few tens of MB that hold each line's fields and its
audio file's bytes.

``python -m qwen_audio.data.shard MANIFEST... OUT`` writes one shard folder per manifest,
``OUT/<manifest name>``, with litdata's chunk writer (``litdata.streaming.Cache``, in this process:
``litdata.optimize``'s worker processes would not keep the lines' order): a run then opens a handful
of chunk files instead of one file per clip, which is what network and object storage are slow at.
Train from them with ``data.train: [OUT/a, OUT/b]`` and ``data.streaming: true``
(:class:`~qwen_audio.data.streaming.StreamingAudioTextDataset`); ``data.weights`` mixes the folders
as it mixes manifests, and the batches are those the manifests themselves give.

An item holds the manifest line (``audio`` made absolute, ``duration`` filled in from the file's
header, so that batches can be planned without decoding), the ``file:line`` it came from, and the
bytes of the whole audio file: the segment is cut after decoding and resampling, as from the file,
so that a clip is the same sample for sample. Items keep the manifest's order (one writer per
folder): reader ``r`` of ``n`` takes items ``r, r + n, ...`` in order, as it takes a manifest's
lines.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import soundfile

from qwen_audio.data.manifest import (
    LANGUAGES,
    ManifestEntry,
    ManifestError,
    _parse_line,
    iter_manifest,
)
from qwen_audio.prompts import TASKS

CHUNK_BYTES = "64MB"  # litdata's default; a chunk is what a reader downloads and opens at once


REMOTE = ("s3://", "gs://", "azure://", "hf://")  # object stores litdata streams from


def is_shard_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder of litdata chunks: it holds litdata's ``index.json``, or lies in
    an object store."""
    return os.fspath(path).startswith(REMOTE) or os.path.isfile(os.path.join(path, "index.json"))


def _item(entry: ManifestEntry) -> dict:
    """The shard item of a validated entry: its line with a duration, where it came from, its file's
    bytes."""
    line = entry.to_json()
    if entry.duration is None:
        line["duration"] = soundfile.info(entry.audio).duration - entry.offset
    with open(entry.audio, "rb") as file:
        audio = file.read()
    return {"line": json.dumps(line, ensure_ascii=False), "source": entry.source, "audio": audio}


def write_shards(
    manifests: list[str | os.PathLike],
    out: str | os.PathLike,
    *,
    chunk_bytes: str = CHUNK_BYTES,
    on_error: Literal["raise", "skip"] = "raise",
) -> list[Path]:
    """Write one shard folder per manifest under ``out`` and return them. Every line is checked as
    training checks it, audio file included (``on_error`` as in
    :func:`~qwen_audio.data.manifest.iter_manifest`)."""
    from litdata.streaming import Cache  # litdata takes seconds to import: only where it is used

    stems = [Path(m).name.removesuffix(".jsonl") for m in manifests]
    if len(set(stems)) != len(stems):
        raise ValueError(f"manifests must have distinct names, one shard folder each: {stems}")
    folders = []
    for manifest, stem in zip(manifests, stems):
        entries = list(iter_manifest(manifest, check_audio=True, on_error=on_error))
        folder = Path(out) / stem
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        writer = Cache(input_dir=str(folder), chunk_bytes=chunk_bytes)
        for index, entry in enumerate(entries):
            writer[index] = _item(entry)
        writer.done()
        writer.merge()
        folders.append(folder)
    return folders


def read_shards(
    folder: str | os.PathLike, *, tasks=TASKS, languages=LANGUAGES, shard: tuple[int, int] = (0, 1)
) -> Iterator[tuple[ManifestEntry, bytes]]:
    """The entries of a shard folder with their audio file's bytes, items ``index, index + count,
    ...`` of ``shard = (index, count)``, in order; an entry's ``source`` is the manifest line it was
    sharded from."""
    from litdata import StreamingDataset

    index, count = shard
    dataset = StreamingDataset(os.fspath(folder))
    for position in range(index, len(dataset), count):
        item = dataset[position]
        try:
            entry = _parse_line(item["line"], "/", tasks, languages, False, item["source"])
        except ManifestError as err:  # a task or language the model lacks: name the line
            path, _, line = item["source"].rpartition(":")
            raise err.at(path, int(line)) from None
        yield entry, item["audio"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m qwen_audio.data.shard", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "manifests", nargs="+", metavar="MANIFEST", help="JSONL manifests, one shard folder each"
    )
    parser.add_argument("out", help="folder that receives OUT/<manifest name>/")
    parser.add_argument(
        "--chunk_bytes", default=CHUNK_BYTES, help="size of a chunk (default %(default)s)"
    )
    parser.add_argument(
        "--on_error",
        choices=("raise", "skip"),
        default="raise",
        help="stop at the first bad line, or skip bad lines and warn with their count",
    )
    args = parser.parse_args(argv)
    for manifest, folder in zip(args.manifests, write_shards(
        args.manifests, args.out, chunk_bytes=args.chunk_bytes, on_error=args.on_error
    )):
        print(f"{manifest} -> {folder}")


if __name__ == "__main__":
    main()
