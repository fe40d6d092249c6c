"""Throughput and latency of a running ``qwen_audio.serve`` at 1, 4, 16 and 64 concurrent users.

Each user sends a request, waits for its answer, and sends the next. With ``--request-rate`` the
requests arrive instead as a Poisson process at that rate (exponential gaps, seeded). At most
``concurrency`` are then in flight, as in vLLM's serving benchmark.

Chat requests are streamed greedy completions with one audio clip and a question. The clip is noise
and a tone, ``--seconds`` long, or the file ``--audio`` names (a trained model says little about
noise). Streaming shows the time to the first token (TTFT) and between tokens (ITL). ITL is measured
between text chunks, each holding the tokens of one decoding step. Transcription requests
(``--workload transcription``) send the clip as a file, and their TTFT is their latency. Speed-ups
are requests/s against concurrency 1, measured in the same run::

    python -m qwen_audio.serve --checkpoint runs/pretrain-demo/pretrained --port 8000 &
    python benchmarks_perf/bench_serve.py --url http://127.0.0.1:8000 [--workload transcription] \\
        [--requests 64 --max-tokens 16 --request-rate 8]
"""

from __future__ import annotations

import argparse
import base64
import io
import random
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import openai
import soundfile

LEVELS = (1, 4, 16, 64)


def clip(seconds: float) -> bytes:
    rng = np.random.default_rng(0)
    n = round(seconds * 16000)
    audio = 0.1 * rng.standard_normal(n) + 0.2 * np.sin(2 * np.pi * 300 * np.arange(n) / 16000)
    out = io.BytesIO()
    soundfile.write(out, audio.astype(np.float32), 16000, format="WAV")
    return out.getvalue()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return (
        ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]
        if ordered
        else float("nan")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--workload", choices=("chat", "transcription"), default="chat")
    parser.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    parser.add_argument("--max-tokens", type=int, default=16, help="new tokens per chat request")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of the audio clip")
    parser.add_argument("--audio", help="send this audio file instead of the noise-and-tone clip")
    parser.add_argument(
        "--request-rate",
        type=float,
        default=float("inf"),
        help="Poisson arrivals per second (default: inf, every user sends back to back)",
    )
    parser.add_argument(
        "--levels", type=int, nargs="+", default=list(LEVELS), help="concurrency levels"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    client = openai.OpenAI(base_url=f"{args.url}/v1", api_key="none", max_retries=0, timeout=600)
    model = client.models.list().data[0].id
    wav = clip(args.seconds) if args.audio is None else open(args.audio, "rb").read()
    audio = base64.b64encode(wav).decode()

    def chat(index: int) -> tuple[float, list[float], int]:
        """Latency, chunk arrival times and output tokens of one streamed request.

        The arrival times are from the start.
        """
        start = time.perf_counter()
        arrivals, tokens = [], 0
        stream = client.chat.completions.create(
            model=model,
            temperature=0,
            max_tokens=args.max_tokens,
            stream=True,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}},
                        {"type": "text", "text": f"What do you hear? ({index})"},
                    ],
                }
            ],
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                arrivals.append(time.perf_counter() - start)
            if chunk.usage:
                tokens = chunk.usage.completion_tokens
        return time.perf_counter() - start, arrivals, tokens

    def transcription(index: int) -> tuple[float, list[float], int]:
        start = time.perf_counter()
        client.audio.transcriptions.create(
            model=model, file=(f"clip{index}.wav", wav), language="en"
        )
        latency = time.perf_counter() - start
        return latency, [latency], 0

    one = chat if args.workload == "chat" else transcription
    one(-1)  # warm-up
    rate = (
        "back to back"
        if args.request_rate == float("inf")
        else f"Poisson arrivals at {args.request_rate:g}/s"
    )
    print(
        f"model {model}, {args.workload}, {args.requests} requests per level, "
        + (
            f"{args.seconds:g} s noise-and-tone audio"
            if args.audio is None
            else f"audio {args.audio}"
        )
        + (f", {args.max_tokens} new tokens (greedy, streamed)" if args.workload == "chat" else "")
        + f", {rate}\n"
    )
    print(
        "| concurrency | requests/s | output tokens/s | TTFT p50 (s) | TTFT p95 (s) | ITL p50 (ms) | ITL p95 (ms) "
        "| speed-up vs 1 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    base = None
    for concurrency in args.levels:
        gaps = random.Random(args.seed)
        start = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            futures = []
            for index in range(args.requests):
                futures.append(pool.submit(one, index))
                if args.request_rate != float("inf"):
                    time.sleep(gaps.expovariate(args.request_rate))
            results = [future.result() for future in futures]
        elapsed = time.perf_counter() - start
        rps = len(results) / elapsed
        base = base or rps
        ttft = [arrivals[0] if arrivals else latency for latency, arrivals, _ in results]
        itl = [(b - a) * 1e3 for _, arrivals, _ in results for a, b in zip(arrivals, arrivals[1:])]
        tokens = sum(count for *_, count in results) / elapsed
        print(
            f"| {concurrency} | {rps:.2f} | {tokens:.1f} | {statistics.median(ttft):.3f} | "
            f"{percentile(ttft, 0.95):.3f} | {percentile(itl, 0.5):.1f} | {percentile(itl, 0.95):.1f} | "
            f"{rps / base:.2f}x |"
        )


if __name__ == "__main__":
    main()
