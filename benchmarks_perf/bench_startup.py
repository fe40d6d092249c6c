"""Start-up of the ``--help`` of generate, chat and serve against a bare ``import torch``.

    python benchmarks_perf/bench_startup.py [--repeats 5]

Each command runs ``--repeats`` times in a fresh interpreter from the repository root. That way this
checkout's ``qwen_audio`` is the one imported. The four commands take turns, so they see the same
load from other processes. A ``--help`` needs nothing heavier than torch, so each should take at
most 1.5x the bare import (issue 19). One ``target:`` line per command says PASS or MISS.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _timing import pass_or_miss

REPOSITORY = Path(__file__).resolve().parents[1]
BASELINE = "python -c 'import torch'"
COMMANDS = {
    BASELINE: ["-c", "import torch"],
    "python -m qwen_audio.generate --help": ["-m", "qwen_audio.generate", "--help"],
    "python -m qwen_audio.chat --help": ["-m", "qwen_audio.chat", "--help"],
    "python -m qwen_audio.serve --help": ["-m", "qwen_audio.serve", "--help"],
}
RATIO_TARGET = 1.5  # benchmarks_perf/README.md: --help within 1.5x import torch


def wall_seconds(arguments: list[str]) -> float:
    """Seconds from starting the interpreter on ``arguments`` to its exit.

    A failing command raises with its stderr.
    """
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, *arguments], cwd=REPOSITORY, capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(
            f"python {' '.join(arguments)} exited with {done.returncode}:\n{done.stderr}"
        )
    return seconds


def median_seconds(repeats: int) -> dict[str, float]:
    """The median wall time of each of :data:`COMMANDS`, run in ``repeats`` interleaved rounds."""
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(repeats):
        for name, arguments in COMMANDS.items():
            times[name].append(wall_seconds(arguments))
    return {name: statistics.median(seconds) for name, seconds in times.items()}


def report(medians: dict[str, float]) -> list[str]:
    """The Markdown table of ``medians`` (seconds by command), then the target lines.

    There is one target line per command, against the baseline.
    """
    baseline = medians[BASELINE]
    lines = ["| command | median s | vs import torch | target <= 1.5x |", "|---|---|---|---|"]
    targets = []
    for name, seconds in medians.items():
        ratio = seconds / baseline
        verdict = pass_or_miss(ratio <= RATIO_TARGET)
        lines.append(
            f"| `{name}` | {seconds:.2f} | {ratio:.2f}x | {'' if name == BASELINE else verdict} |"
        )
        if name != BASELINE:
            targets.append(
                f"target: `{name}` {ratio:.2f}x import torch (<= {RATIO_TARGET:g}x): {verdict}"
            )
    return lines + [""] + targets


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeats", type=int, default=5, help="runs of each command (the median is reported)"
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    print(f"start-up, median of {args.repeats} interleaved runs, {sys.executable}\n")
    print("\n".join(report(median_seconds(args.repeats))))


if __name__ == "__main__":
    main()
