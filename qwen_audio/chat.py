"""Multi-turn chat over several audios in the release's ChatML (spec §7), and a terminal front end.

A terminal session::

    python -m qwen_audio.chat --checkpoint DIR
    > <audio>dog.wav</audio>What do you hear?
    > /reset      (forget the conversation)
    > /quit       (or end of input)
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Mapping, Sequence
from typing import TextIO

from qwen_audio.audio import load_audio
from qwen_audio.cli import (
    add_generation_arguments,
    add_model_arguments,
    generation_config,
    load_model_from_arguments,
)
from qwen_audio.clips import AudioLoader
from qwen_audio.generate import GenerationConfig, answer_prompts
from qwen_audio.model import QwenAudio
from qwen_audio.prompts import (
    DEFAULT_SYSTEM,
    AudioItem,
    Example,
    Message,
    encode_chat,
    from_list_format,
)
from qwen_audio.tokenizer import AUDIO_START, Tokenizer

MAX_WINDOW_SIZE = (
    6144  # chat_generation_config.json: history is dropped, oldest first, beyond this many tokens
)

Query = str | Sequence[Mapping[str, AudioItem]]  # raw text, or the items of a user turn
History = list[tuple[Query, str]]


def build_context(
    tokenizer: Tokenizer,
    query: Query,
    history: History,
    system: str,
    max_window_size: int = MAX_WINDOW_SIZE,
    load: AudioLoader = load_audio,
) -> Example:
    """The generation prompt for ``query`` after ``history``.

    It is built as the release's ``make_context`` builds it. The newest history turns are kept while
    the system turn plus the kept turns (audio placeholders included) stay under ``max_window_size``
    tokens. Older turns are dropped. The new query is not counted, as released. ``load`` decodes
    each ``<audio>PATH</audio>`` of raw text. Item lists may hold recordings.
    """
    if not isinstance(load, Mapping):
        load = functools.cache(
            load
        )  # each audio file is decoded once however often the context is rebuilt
    system_turn = [Message("system", system)]

    def turns(pairs: History) -> list[Message]:
        return [
            message for q, r in pairs for message in (Message("user", q), Message("assistant", r))
        ]

    kept = len(history)
    while (
        kept
        and len(encode_chat(tokenizer, system_turn + turns(history[-kept:]), load=load).ids)
        >= max_window_size
    ):
        kept -= 1
    messages = system_turn + turns(history[len(history) - kept :]) + [Message("user", query)]
    return encode_chat(tokenizer, messages, add_generation_prompt=True, load=load)


def chat(
    model: QwenAudio,
    tokenizer: Tokenizer,
    query: str | Sequence[Mapping[str, str]],
    history: History | None = None,
    system: str = DEFAULT_SYSTEM,
    config: GenerationConfig | None = None,
    *,
    max_window_size: int = MAX_WINDOW_SIZE,
) -> tuple[str, History]:
    """Answer ``query`` and return ``(response, history + [(query, response)])``.

    ``query`` is text with ``<audio>PATH</audio>`` spans, or items
    ``[{"audio": path}, {"text": ...}]``. Items are written as the family's
    ``Audio 1:<audio>PATH</audio>\\n`` lines (:func:`from_list_format`). Qwen2-Audio numbers on from
    the audios of ``history``. ``config`` defaults to the release's chat settings
    (:meth:`GenerationConfig.chat`). The response is cut at the first ``<|im_end|>`` or
    ``<|im_start|>``, whatever the config's stop ids. It is then stripped, as released.
    """
    history = list(history or [])
    text = (
        query
        if isinstance(query, str)
        else from_list_format(query, tokenizer.family, _audio_count(history))
    )
    config = config or GenerationConfig.chat(tokenizer)
    context = build_context(tokenizer, text, history, system, max_window_size)
    ids = answer_prompts(model, tokenizer, [context], config)[0].ids
    ends = [
        index for index, token in enumerate(ids) if token in (tokenizer.im_end, tokenizer.im_start)
    ]
    response = tokenizer.decode(ids[: ends[0]] if ends else ids).strip()
    return response, history + [(text, response)]


def _audio_count(history: History) -> int:
    """The audios of the earlier queries (each ``<audio>…</audio>`` span is one)."""
    return sum(query.count(AUDIO_START) for query, _ in history if isinstance(query, str))


def main(
    argv: Sequence[str] | None = None, stdin: TextIO | None = None, stdout: TextIO | None = None
) -> None:
    """Read one query per line from ``stdin`` and print each answer to ``stdout``.

    Both default to the terminal. Errors in a query (a missing audio file, a query over the context)
    are printed and the conversation goes on.
    """
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    parser = argparse.ArgumentParser(
        prog="python -m qwen_audio.chat", description=__doc__.split("\n\n")[0]
    )
    add_model_arguments(parser)
    add_generation_arguments(parser)
    parser.add_argument("--system", default=DEFAULT_SYSTEM)
    args = parser.parse_args(argv)
    model, tokenizer = load_model_from_arguments(parser, args)
    config = generation_config(parser, args, GenerationConfig.chat(tokenizer))
    history: History = []
    print(
        "Chat with Qwen-Audio: <audio>PATH</audio> inserts audio, /reset forgets, /quit leaves.",
        file=stdout,
    )
    for line in stdin:
        query = line.strip()
        if query == "/quit":
            break
        if query == "/reset":
            history = []
            print("(history cleared)", file=stdout, flush=True)
            continue
        if not query:
            continue
        try:
            response, history = chat(model, tokenizer, query, history, args.system, config)
        except (FileNotFoundError, ValueError) as err:
            print(f"error: {err}", file=stdout, flush=True)
            continue
        print(response, file=stdout, flush=True)


if __name__ == "__main__":
    main()
