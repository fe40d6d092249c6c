"""Serve a checkpoint folder (either family) behind an OpenAI-compatible API.

Usage::

    python -m qwen_audio.serve --checkpoint MODEL_DIR --port 8000  # a folder in the released layout

The server runs on LitServe, with continuous batching.
The endpoints are ``GET /health`` (ok once the model is loaded) and ``GET /v1/models``.
``POST /v1/chat/completions`` takes text and ``input_audio`` parts, and ``stream``.
``POST /v1/audio/transcriptions`` takes multipart, with ``timestamp_granularities[]=word`` for word
timestamps. The server logs one line per request: id, audio seconds, tokens, latency.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence

from qwen_audio.serve.guards import API_KEY_VARIABLE, Limits

DTYPES = ("float32", "bfloat16", "float16", "float64")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m qwen_audio.serve", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        metavar="DIR",
        help="a Qwen-Audio released-layout folder (e.g. an export of the recipes) or a Qwen2-Audio "
        "Hugging Face folder",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (127.0.0.1: this machine only)"
    )
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--device",
        default="auto",
        choices=("auto", "cpu", "cuda"),
        help="auto: cuda when available",
    )
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        help="weights' dtype (default: float32 on CPU, the checkpoint's elsewhere)",
    )
    parser.add_argument(
        "--max-slots",
        type=int,
        default=16,
        help="sequences decoded together at most (a transcription takes one per 30 s window)",
    )
    parser.add_argument(
        "--max-model-len",
        type=int,
        default=2048,
        help="tokens per sequence at most, prompt included (longer chat requests get a 400)",
    )
    parser.add_argument(
        "--max-queue",
        type=int,
        default=256,
        help="requests waiting for a slot at most; past it a request gets a 503 with Retry-After",
    )
    guards = parser.add_argument_group("limits")
    guards.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_VARIABLE),
        help=f"require 'Authorization: Bearer KEY' on every route but /health (default: "
        f"${API_KEY_VARIABLE}; unset: no key)",
    )
    guards.add_argument(
        "--max-request-mb",
        type=float,
        default=Limits.max_request_mb,
        help="larger request bodies get a 413 before they are read",
    )
    guards.add_argument(
        "--max-audio-seconds",
        type=float,
        default=Limits.max_audio_seconds,
        help="longest audio part of a chat request (400 naming the part)",
    )
    guards.add_argument(
        "--max-transcription-seconds",
        type=float,
        default=Limits.max_transcription_seconds,
        help="longest file /v1/audio/transcriptions takes (read in 30 s windows)",
    )
    guards.add_argument(
        "--shutdown-timeout",
        type=float,
        default=Limits.shutdown_timeout,
        help="seconds SIGTERM waits for the requests in flight before the server exits",
    )
    args = parser.parse_args(argv)
    for name in (
        "max_request_mb",
        "max_audio_seconds",
        "max_transcription_seconds",
        "shutdown_timeout",
    ):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if args.max_slots < 1:
        parser.error(f"--max-slots must be >= 1, got {args.max_slots}")
    if args.max_model_len < 1:
        parser.error(f"--max-model-len must be >= 1, got {args.max_model_len}")
    if args.max_queue < 0:
        parser.error(f"--max-queue must be >= 0, got {args.max_queue}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(
        argv
    )  # before the heavy imports, so that --help and bad arguments answer at once
    import torch

    from qwen_audio.serve.server import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    limits = Limits(
        args.api_key,
        args.max_request_mb,
        args.max_audio_seconds,
        args.max_transcription_seconds,
        args.shutdown_timeout,
    )
    serve(
        args.checkpoint,
        host=args.host,
        port=args.port,
        device=args.device,
        dtype=getattr(torch, args.dtype) if args.dtype else None,
        max_slots=args.max_slots,
        max_model_len=args.max_model_len,
        max_queue=args.max_queue,
        limits=limits,
    )


if __name__ == "__main__":
    main()
