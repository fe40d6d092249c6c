"""``python -m qwen_audio.generate``: answer raw release-style prompts, or transcribe audio > 30 s.

Answers print one per line (``--json``: one object per prompt and line). ``--long-form`` gives
transcripts of audio over 30 s instead. For example::

    TAGS="<|startoftranscript|><|en|><|transcribe|><|en|><|notimestamps|><|wo_itn|>"
    python -m qwen_audio.generate --checkpoint DIR --greedy --json \\
        --prompt "<audio>clip.wav</audio>$TAGS"
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterator, Sequence

from qwen_audio.batching import encode_prompt
from qwen_audio.cli import (
    add_generation_arguments,
    add_model_arguments,
    generation_config,
    load_model_from_arguments,
)
from qwen_audio.errors import TRACEBACK_VARIABLE, InputError, input_errors_reported
from qwen_audio.generate import GenerationConfig, answer_prompts
from qwen_audio.longform import transcribe_long
from qwen_audio.model import QwenAudio
from qwen_audio.tokenizer import MODEL_MAX_LENGTH, QwenAudioTokenizer

_TRANSCRIPTION = re.compile(
    r"^<audio>(?P<path>[^<]+)</audio><\|startoftranscript\|><\|(?P<language>\w+)\|>"
    r"<\|transcribe\|>"
)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m qwen_audio.generate", description=__doc__.split("\n\n")[0]
    )
    add_model_arguments(parser)
    add_generation_arguments(parser)
    parser.add_argument(
        "--prompt",
        action="append",
        required=True,
        help="raw prompt with <audio>PATH</audio> spans and tags; repeat for several",
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--json", action="store_true", help="one {prompt, ids, text} object per prompt and line"
    )
    parser.add_argument(
        "--long-form",
        action="store_true",
        help="transcribe audio over 30 s in consecutive windows (qwen_audio.longform) instead of "
        "truncating it as the release does",
    )
    parser.add_argument(
        "--print-traceback",
        action="store_true",
        help=f"show the traceback of input errors too (or set {TRACEBACK_VARIABLE}=1)",
    )
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    with input_errors_reported(args.print_traceback):
        model, tokenizer = load_model_from_arguments(parser, args)
        config = generation_config(parser, args, GenerationConfig.base(tokenizer))
        if args.long_form:
            results = [
                _long_form(parser, model, tokenizer, prompt, config) for prompt in args.prompt
            ]
        else:
            results = _generate_all(parser, model, tokenizer, args.prompt, config, args.batch_size)
        for result in results:
            print(
                json.dumps(result, ensure_ascii=False) if args.json else result["text"], flush=True
            )


def _generate_all(
    parser: argparse.ArgumentParser,
    model: QwenAudio,
    tokenizer: QwenAudioTokenizer,
    prompts: list[str],
    config: GenerationConfig,
    batch_size: int,
) -> Iterator[dict]:
    """Encode every prompt first, then answer ``batch_size`` at a time.

    Bad input thus fails before any decoding.
    """
    try:
        encoded = [
            encode_prompt(tokenizer, p, MODEL_MAX_LENGTH, index) for index, p in enumerate(prompts)
        ]
    except InputError:
        raise  # bad audio: input_errors_reported's one line, not the usage text
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    for first in range(0, len(prompts), batch_size):
        answers = answer_prompts(model, tokenizer, encoded[first : first + batch_size], config)
        for prompt, answer in zip(prompts[first : first + batch_size], answers):
            yield {"prompt": prompt, "ids": answer.ids, "text": answer.text}


def _long_form(
    parser: argparse.ArgumentParser,
    model: QwenAudio,
    tokenizer: QwenAudioTokenizer,
    prompt: str,
    config: GenerationConfig,
) -> dict:
    match = _TRANSCRIPTION.match(prompt)
    if match is None:
        parser.error(
            f"--long-form needs a transcription prompt '<audio>PATH</audio><|startoftranscript|><|LANG|>"
            f"<|transcribe|>...', got {prompt!r}"
        )
    try:
        result = transcribe_long(
            model,
            tokenizer,
            match["path"],
            language=match["language"],
            timestamps="<|timestamps|>" in prompt,
            config=config,
        )
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    return {
        "prompt": prompt,
        "text": result.text,
        "words": [[w.text, w.start, w.end] for w in result.words],
        "windows": [list(window) for window in result.windows],
    }


if __name__ == "__main__":
    main()
