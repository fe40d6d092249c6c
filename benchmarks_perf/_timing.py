"""Timing shared by the benchmarks."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def measure_ms(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Milliseconds per call: ``triton.testing.do_bench`` median on CUDA; on CPU the best wall clock of ``repeats``
    calls after two warm-ups (the minimum, because other processes on a shared CPU only ever add time)."""
    if device.type == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, return_mode="median")
    fn(), fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def interleaved_speedup(ours: Callable[[], object], theirs: Callable[[], object], pairs: int) -> float:
    """Median over ``pairs`` back-to-back CPU runs of theirs / ours: both see the same load from other processes,
    which a best-of-N taken for each one at a different time does not ensure."""
    ours(), theirs()
    ratios = []
    for _ in range(pairs):
        start = time.perf_counter()
        theirs()
        middle = time.perf_counter()
        ours()
        ratios.append((middle - start) / (time.perf_counter() - middle))
    return statistics.median(ratios)


def pass_or_miss(passed: bool) -> str:
    """The verdict word ``gpu_check.sh`` greps for in a benchmark's target line."""
    return "PASS" if passed else "MISS"


def device_name(device: torch.device) -> str:
    """What a results table names the device by: the GPU model, or the CPU and its thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"
