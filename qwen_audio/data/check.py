"""Every problem of training manifests, one ``file:line: field: reason`` a line, before a run.

Usage::

    python -m qwen_audio.data.check train.jsonl dev.jsonl            # fields and audio headers
    python -m qwen_audio.data.check --decode --workers 8 train.jsonl  # and every clip decoded

By default only the JSON and each audio file's header are read. That finds what the data module
refuses when it reads a manifest. Such problems are a bad field, a missing or unreadable file, or a
segment past the file's end or outside 30 ms to 30 s. The check reports them for every line instead
of the first.

``--decode`` also decodes every clip, in parallel threads, with a progress bar. It finds what only
decoding shows (a file that no longer decodes, NaN/inf samples, a silent clip) before training, not
when its batch is first built. The exit status is 1 when anything is bad. The data module runs the
same check before step 0 (``data.validate: header|decode``), on conversation files too.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Container, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from tqdm import tqdm

from qwen_audio.data.conversations import Conversation
from qwen_audio.data.dataset import load_clip, load_segment
from qwen_audio.data.manifest import LANGUAGES, ManifestEntry, ManifestError, _parse_line
from qwen_audio.errors import AudioError, InputError
from qwen_audio.prompts import TASKS


def header_problems(
    path: str, tasks: Container[str] = TASKS
) -> tuple[list[ManifestEntry], list[str]]:
    """The good entries of a manifest, and a ``file:line: field: reason`` for each bad line.

    It checks the fields and the audio file's header, as
    :func:`~qwen_audio.data.manifest.iter_manifest` with ``check_audio`` does, without stopping.
    """
    folder = os.path.dirname(os.path.abspath(path))
    entries, problems = [], []
    with open(path, encoding="utf-8") as file:
        for number, raw in enumerate(file, start=1):
            if not raw.strip():
                continue
            try:
                entries.append(_parse_line(raw, folder, tasks, LANGUAGES, True, f"{path}:{number}"))
            except ManifestError as err:
                problems.append(str(err.at(path, number)))
    if not entries and not problems:
        problems.append(f"{path}: no entries: the file is empty")
    return entries, problems


Clip = tuple[str, Callable[[], object]]  # where it is named (``file:line``), and how it is decoded


def entry_clips(entries: Iterable[ManifestEntry]) -> list[Clip]:
    """The segment of each manifest entry (:func:`~qwen_audio.data.dataset.load_segment`)."""
    return [(entry.source or entry.audio, partial(load_segment, entry)) for entry in entries]


def conversation_clips(conversations: Iterable[Conversation]) -> list[Clip]:
    """Every clip of each conversation (:func:`~qwen_audio.data.dataset.load_clip`)."""
    return [
        (conversation.source or conversation.id, partial(conversation.loader(load_clip), path))
        for conversation in conversations
        for path in conversation.audios
    ]


def decode_problem(clip: Clip) -> str | None:
    """``file:line: audio: reason`` when the clip does not decode, holds NaN/inf or is silent."""
    where, load = clip
    try:
        load()
    except (AudioError, OSError) as err:  # OSError: the file is gone since its header was read
        text = str(err)
        return text if text.startswith(f"{where}: ") else f"{where}: audio: {text}"
    return None


def decode_problems(
    clips: Sequence[Clip], workers: int | None = None, progress: bool = True
) -> list[str]:
    """:func:`decode_problem` of every clip, in order, ``workers`` threads at a time.

    Threads help because soundfile and torch release the GIL while they decode and resample.
    """
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count()) as pool:
        found = tqdm(
            pool.map(decode_problem, clips),
            total=len(clips),
            desc="decoding",
            unit="clip",
            disable=not progress,
            file=sys.stderr,
        )
        return [problem for problem in found if problem is not None]


def require_decodable(clips: Sequence[Clip]) -> None:
    """Raise an error listing every clip that :func:`decode_problem` refuses.

    The error is an :class:`~qwen_audio.errors.InputError`. This is the data modules'
    ``validate: decode``, before step 0.
    """
    problems = decode_problems(clips)
    if problems:
        raise InputError(f"{len(problems)} bad clip(s):\n" + "\n".join(problems))


def check_manifests(
    paths: Iterable[str],
    decode: bool = False,
    workers: int | None = None,
    progress: bool = True,
    tasks: Container[str] = TASKS,
) -> list[str]:
    """Every problem of ``paths``: headers, and with ``decode`` the decoded clips.

    Only the lines whose header is good are decoded.
    """
    problems, entries = [], []
    for path in paths:
        if not os.path.isfile(path):
            problems.append(f"{path}: manifest not found")
            continue
        good, bad = header_problems(path, tasks)
        entries += good
        problems += bad
    if decode:
        problems += decode_problems(entry_clips(entries), workers, progress)
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m qwen_audio.data.check", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("manifests", nargs="+", metavar="MANIFEST", help="JSONL training manifests")
    parser.add_argument(
        "--decode",
        action="store_true",
        help="also decode every clip: finds undecodable, non-finite and silent audio",
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="decoding threads (default: one per CPU)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    problems = check_manifests(args.manifests, args.decode, args.workers, not args.no_progress)
    for problem in problems:
        print(problem)
    checked = "decoded" if args.decode else "headers read"
    print(
        f"{len(problems)} problem(s) in {len(args.manifests)} manifest(s), {checked}",
        file=sys.stderr,
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
