"""Command-line pieces that ``qwen_audio.generate``, ``qwen_audio.chat`` and ``qwen_audio.serve``
share: where the model comes from, how it decodes, and parser errors in place of tracebacks for what
the user typed wrong.

The checkpoint I/O is imported when the model is loaded, not before, so that ``--help`` and bad
arguments answer at once.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from qwen_audio.generate import GenerationConfig


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--checkpoint DIR`` or ``--preset NAME``, one of them required."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--checkpoint",
        metavar="DIR",
        help="a Qwen-Audio released-layout folder or a Qwen2-Audio Hugging Face folder",
    )
    source.add_argument(
        "--preset",
        metavar="NAME",
        help="a model preset with random weights (seed 0), for smoke tests",
    )


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    """The decoding options; :func:`generation_config` reads them."""
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--min-new-tokens", type=int, default=0)
    parser.add_argument(
        "--greedy", action="store_true", help="argmax decoding (the release's evaluation)"
    )
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--repetition-penalty", type=float, default=1.0)


def generation_config(
    parser: argparse.ArgumentParser, args: argparse.Namespace, release: GenerationConfig
) -> GenerationConfig:
    """``release`` (the base or chat settings) with the command line's options.

    Bad values exit via the parser.
    """
    sampling = {
        k: getattr(args, k)
        for k in ("temperature", "top_k", "top_p", "seed")
        if getattr(args, k) is not None
    }
    if args.greedy and sampling:
        options = ", ".join("--" + name.replace("_", "-") for name in sampling)
        parser.error(f"--greedy takes no sampling options, got {options}")
    try:
        return dataclasses.replace(
            release,
            do_sample=not args.greedy,
            max_new_tokens=args.max_new_tokens,
            min_new_tokens=args.min_new_tokens,
            repetition_penalty=args.repetition_penalty,
            **sampling,
        )
    except ValueError as err:
        parser.error(str(err))


def load_model_from_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace):
    """:func:`qwen_audio.checkpoint.load_model` for ``--checkpoint`` / ``--preset``, on CUDA when
    there is one; a folder or preset that does not load exits via the parser, naming it."""
    from qwen_audio.checkpoint import load_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return load_model(args.checkpoint, preset=args.preset, device=device)
    except (
        FileNotFoundError,
        ValueError,
    ) as err:  # ConfigError and CheckpointError are ValueErrors
        parser.error(str(err))
