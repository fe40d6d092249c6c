"""``python -m qwen_audio.convert``: build checkpoints in the released Qwen-Audio folder layout.

Commands:
  ``init-stage1``: Whisper-large-v2 ``.pt`` (encoder) + a Qwen-7B Hugging Face folder (decoder)
  -> a stage-1 starting checkpoint. :func:`qwen_audio.checkpoint.init_stage1` describes how new
  weights are drawn.
  ``to-safetensors``: a Qwen-Audio folder with ``pytorch_model*.bin`` pickles -> the same weights
  as safetensors.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from qwen_audio.checkpoint import TOKENIZER_FILE, init_stage1, load_pretrained, save_pretrained
from qwen_audio.config import PRESETS, QwenAudioConfig
from qwen_audio.errors import TRACEBACK_VARIABLE, input_errors_reported

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def _tokenizer_in(folder: str, explicit: str | None) -> str | None:
    if explicit is not None:
        return explicit
    candidate = os.path.join(folder, TOKENIZER_FILE)
    return candidate if os.path.isfile(candidate) else None


def _init_stage1(args: argparse.Namespace) -> None:
    config = QwenAudioConfig.from_name(args.preset)
    model = init_stage1(
        args.whisper,
        args.qwen,
        config,
        dtype=DTYPES[args.dtype],
        allow_pickle=args.allow_pickle,
        seed=args.seed,
    )
    save_pretrained(
        model,
        args.out,
        tokenizer_file=_tokenizer_in(args.qwen, args.tokenizer),
        max_shard_size=args.max_shard_size,
    )


def _to_safetensors(args: argparse.Namespace) -> None:
    model = load_pretrained(args.src, allow_pickle=True)
    save_pretrained(
        model,
        args.out,
        tokenizer_file=_tokenizer_in(args.src, None),
        max_shard_size=args.max_shard_size,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m qwen_audio.convert",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--print-traceback",
        action="store_true",
        help=f"show the traceback of input errors too (or set {TRACEBACK_VARIABLE}=1)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    stage1 = commands.add_parser(
        "init-stage1", help="Whisper-large-v2 encoder + Qwen-7B decoder -> stage-1 checkpoint"
    )
    stage1.add_argument(
        "--whisper", required=True, help="openai-whisper checkpoint, e.g. large-v2.pt"
    )
    stage1.add_argument(
        "--qwen", required=True, help="Hugging Face Qwen-7B folder (safetensors shards + index)"
    )
    stage1.add_argument("--out", required=True, help="output folder (released Qwen-Audio layout)")
    stage1.add_argument(
        "--preset",
        default="qwen-audio",
        choices=sorted(PRESETS),
        help="model preset (default qwen-audio)",
    )
    stage1.add_argument(
        "--tokenizer", help=f"tokenizer file to copy (default: --qwen/{TOKENIZER_FILE} if present)"
    )
    stage1.add_argument(
        "--dtype", default="bfloat16", choices=sorted(DTYPES), help="dtype of the saved weights"
    )
    stage1.add_argument(
        "--seed", type=int, default=0, help="seed for the newly initialised weights"
    )
    stage1.add_argument(
        "--allow-pickle", action="store_true", help="also read pytorch_model*.bin pickles in --qwen"
    )
    stage1.add_argument(
        "--max-shard-size", default="5GB", help="largest safetensors shard (default 5GB)"
    )
    stage1.set_defaults(run=_init_stage1)

    safe = commands.add_parser(
        "to-safetensors", help="re-save a folder of .bin pickles as safetensors shards"
    )
    safe.add_argument(
        "--src", required=True, help="Qwen-Audio folder with config.json and pytorch_model*.bin"
    )
    safe.add_argument("--out", required=True, help="output folder")
    safe.add_argument(
        "--max-shard-size", default="5GB", help="largest safetensors shard (default 5GB)"
    )
    safe.set_defaults(run=_to_safetensors)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with input_errors_reported(args.print_traceback):
        args.run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
