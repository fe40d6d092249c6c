"""Timing shared by the benchmarks."""

from __future__ import annotations

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


def device_name(device: torch.device) -> str:
    """What a results table names the device by: the GPU model, or the CPU and its thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"
