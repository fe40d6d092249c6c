"""Requests per second and latency of a running ``python -m qwen_audio.serve`` at concurrency 1, 4 and 16.

Each request is a greedy chat completion with one audio clip (noise and a tone, ``--seconds`` long) and a question,
sent through the ``openai`` client from as many threads as the concurrency; the speed-up is the requests per second
against concurrency 1, measured in the same run, so it shows what dynamic batching gives::

    python -m qwen_audio.serve --checkpoint runs/pretrain-demo/pretrained --port 8000 &
    python benchmarks_perf/bench_serve.py --url http://127.0.0.1:8000 [--requests 32 --max-tokens 16]
"""

from __future__ import annotations

import argparse
import base64
import io
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import openai
import soundfile


def clip(seconds: float) -> str:
    rng = np.random.default_rng(0)
    n = round(seconds * 16000)
    audio = 0.1 * rng.standard_normal(n) + 0.2 * np.sin(2 * np.pi * 300 * np.arange(n) / 16000)
    out = io.BytesIO()
    soundfile.write(out, audio.astype(np.float32), 16000, format="WAV")
    return base64.b64encode(out.getvalue()).decode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--requests", type=int, default=32, help="requests per concurrency level")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of the audio clip")
    args = parser.parse_args()
    client = openai.OpenAI(base_url=f"{args.url}/v1", api_key="none", max_retries=0, timeout=600)
    model = client.models.list().data[0].id
    audio = clip(args.seconds)

    def one(index: int) -> float:
        start = time.perf_counter()
        client.chat.completions.create(model=model, temperature=0, max_tokens=args.max_tokens, messages=[
            {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}},
                                         {"type": "text", "text": f"What do you hear? ({index})"}]}])
        return time.perf_counter() - start

    one(-1)  # warm-up
    print(f"model {model}, {args.requests} requests per level, {args.seconds:g} s audio, {args.max_tokens} new "
          "tokens (greedy)\n")
    print("| concurrency | requests/s | p50 latency (s) | p95 latency (s) | speed-up vs 1 |")
    print("|---|---|---|---|---|")
    base = None
    for concurrency in (1, 4, 16):
        start = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            latencies = sorted(pool.map(one, range(args.requests)))
        rps = args.requests / (time.perf_counter() - start)
        base = base or rps
        p95 = latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))]
        print(f"| {concurrency} | {rps:.2f} | {statistics.median(latencies):.3f} | {p95:.3f} | {rps / base:.2f}x |")


if __name__ == "__main__":
    main()
