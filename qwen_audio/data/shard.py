"""Manifests -> litdata shards: chunks of a few tens of MB that hold each line's fields and its
audio file's bytes.

``python -m qwen_audio.data.shard MANIFEST... OUT`` writes one shard folder per manifest,
``OUT/<manifest name>``. It uses litdata's chunk writer (``litdata.streaming.Cache``) in this
process, because ``litdata.optimize``'s worker processes would not keep the lines' order. A run then
opens a handful of chunk files instead of one file per clip. One file per clip is what network and
object storage are slow at. Train from them with ``data.train: [OUT/a, OUT/b]`` and
``data.streaming: true`` (:class:`~qwen_audio.data.streaming.StreamingAudioTextDataset`).
``data.weights`` mixes the folders as it mixes manifests. The batches are those the manifests
themselves give.

An item holds the manifest line, the ``file:line`` it came from, and the bytes of the whole audio
file. In the line, ``audio`` is made absolute and ``duration`` is filled in from the file's header.
Batches can thus be planned without decoding. The segment is cut after decoding and resampling, as
from the file, so a clip is the same sample for sample. Items keep the manifest's order (one writer
per folder). Reader ``r`` of ``n`` takes items ``r, r + n, ...`` in order, as it takes a manifest's
lines.

``--conversations`` shards SFT conversation files instead (:mod:`qwen_audio.data.conversations`).
An item then holds the conversation line (audio paths absolute), its ``file:line`` and the bytes of
each audio file it names. :class:`~qwen_audio.data.chat_datamodule.ChatDataModule` reads them by
index wherever it reads a conversation file. Its token-count buckets and resume are thus those of
the file.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import soundfile

from qwen_audio.data.conversations import Conversation, parse_conversation, read_conversations
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
    """Whether ``path`` is a folder of litdata chunks.

    It is one when it holds litdata's ``index.json``, or when it lies in an object store.
    """
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
    """Write one shard folder per manifest under ``out`` and return them.

    Every line is checked as training checks it, audio file included (``on_error`` as in
    :func:`~qwen_audio.data.manifest.iter_manifest`).
    """
    folders = _folders(manifests, out)
    for manifest, folder in zip(manifests, folders):
        entries = list(iter_manifest(manifest, check_audio=True, on_error=on_error))
        _write(folder, (_item(entry) for entry in entries), chunk_bytes)
    return folders


def write_conversation_shards(
    files: list[str | os.PathLike], out: str | os.PathLike, *, chunk_bytes: str = CHUNK_BYTES
) -> list[Path]:
    """Write one shard folder per conversation file under ``out`` and return them.

    Every line is checked as training checks it
    (:func:`~qwen_audio.data.conversations.read_conversations`). A bad line thus stops before
    anything is written.
    """
    folders = _folders(files, out)
    for file, folder in zip(files, folders):
        conversations = read_conversations(file)
        _write(folder, (_conversation_item(c) for c in conversations), chunk_bytes)
    return folders


def _folders(files: list[str | os.PathLike], out: str | os.PathLike) -> list[Path]:
    """``OUT/<file name>`` of each file.

    Names must differ, as each file gets its own folder.
    """
    stems = [Path(f).name.removesuffix(".jsonl") for f in files]
    if len(set(stems)) != len(stems):
        raise ValueError(f"files must have distinct names, one shard folder each: {stems}")
    return [Path(out) / stem for stem in stems]


def _write(folder: Path, items: Iterable[dict], chunk_bytes: str) -> None:
    """Write ``items`` in order as the litdata chunks of ``folder``, replacing what was there."""
    from litdata.streaming import Cache  # litdata takes seconds to import: only where it is used

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    writer = Cache(input_dir=str(folder), chunk_bytes=chunk_bytes)
    for index, item in enumerate(items):
        writer[index] = item
    writer.done()
    writer.merge()


def _conversation_item(conversation: Conversation) -> dict:
    """The shard item of a validated conversation.

    It holds the line (audio paths absolute), where it came from, and its audio files' bytes, one
    after the other. ``audios`` names each file's path and size. Every item then has the same
    fields, which litdata's chunks need.
    """
    paths = list(dict.fromkeys(conversation.audios))
    audio = [Path(path).read_bytes() for path in paths]
    return {
        "line": json.dumps(conversation.to_json(), ensure_ascii=False),
        "source": conversation.source,
        "audios": json.dumps([[path, len(data)] for path, data in zip(paths, audio)]),
        "audio": b"".join(audio),
    }


def read_shards(
    folder: str | os.PathLike, *, tasks=TASKS, languages=LANGUAGES, shard: tuple[int, int] = (0, 1)
) -> Iterator[tuple[ManifestEntry, bytes]]:
    """The entries of a shard folder with their audio file's bytes, in order.

    They are items ``index, index + count, ...`` of ``shard = (index, count)``. An entry's
    ``source`` is the manifest line it was sharded from.
    """
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


def read_conversation_shard(folder: str | os.PathLike) -> list[Conversation]:
    """The conversations of a shard folder, in order.

    Each reads its audio bytes from the shard by index when it is encoded
    (:attr:`~qwen_audio.data.conversations.Conversation.stored`). A data module's sampler thus picks
    conversations from shards as from a file.
    """
    folder = os.fspath(folder)
    dataset = _open(folder, os.getpid())
    conversations = []
    for index in range(len(dataset)):
        item = dataset[index]
        conversation = parse_conversation(json.loads(item["line"]), "/", False, item["source"])
        conversations.append(replace(conversation, stored=StoredAudio(folder, index)))
    return conversations


@dataclass(frozen=True)
class StoredAudio:
    """The audio bytes of item ``index`` of shard ``folder`` by path.

    Calling it reads them.
    """

    folder: str
    index: int

    def __call__(self) -> dict[str, bytes]:
        item = _open(self.folder, os.getpid())[self.index]
        audio, start = {}, 0
        for path, size in json.loads(item["audios"]):
            audio[path] = item["audio"][start : start + size]
            start += size
        return audio


@functools.cache
def _open(folder: str, process: int):
    """The ``StreamingDataset`` of ``folder``, opened once per process.

    A loader worker opens its own.
    """
    from litdata import StreamingDataset

    return StreamingDataset(folder)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m qwen_audio.data.shard", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "manifests",
        nargs="+",
        metavar="MANIFEST",
        help="JSONL manifests (conversation files with --conversations), one shard folder each",
    )
    parser.add_argument("out", help="folder that receives OUT/<manifest name>/")
    parser.add_argument(
        "--chunk_bytes", default=CHUNK_BYTES, help="size of a chunk (default %(default)s)"
    )
    parser.add_argument(
        "--on_error",
        choices=("raise", "skip"),
        default="raise",
        help="stop at the first bad line, or skip bad lines and warn with their count (manifests)",
    )
    parser.add_argument(
        "--conversations",
        action="store_true",
        help="the files are SFT conversation JSONL (qwen_audio.data.conversations), not manifests",
    )
    args = parser.parse_args(argv)
    if args.conversations:
        if args.on_error != "raise":
            parser.error("--on_error skip applies to manifests; a conversation file must be valid")
        folders = write_conversation_shards(args.manifests, args.out, chunk_bytes=args.chunk_bytes)
    else:
        folders = write_shards(
            args.manifests, args.out, chunk_bytes=args.chunk_bytes, on_error=args.on_error
        )
    for manifest, folder in zip(args.manifests, folders):
        print(f"{manifest} -> {folder}")


if __name__ == "__main__":
    main()
