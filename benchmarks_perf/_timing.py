"""Timing and device ceilings shared by the benchmarks.

Run as a script on a CUDA machine, it prints the device line of gpu_check.sh.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

LONG_CALL_S = (
    1.0  # a CUDA call this slow (a whole generation) is timed by the wall clock, not do_bench
)


def measure_ms(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Milliseconds per call of ``fn``.

    On CUDA this is the ``triton.testing.do_bench`` median. On CPU it is the best wall clock of
    ``repeats`` calls after two warm-ups. The minimum is taken because other processes on a shared
    CPU only ever add time.

    A CUDA call of ``LONG_CALL_S`` or more is instead the median of ``repeats`` synchronised wall
    clocks after one warm-up. For such a call, do_bench's five estimating calls and its warm-up
    would take minutes (gpu_check.sh, 2026-12-04: a 5 s generation ran past its step's 120 s).
    Launch jitter is negligible at that length.
    """
    if device.type == "cuda":
        import triton.testing

        start = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        if time.perf_counter() - start < LONG_CALL_S:
            return triton.testing.do_bench(fn, return_mode="median")
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1e3
    fn(), fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def interleaved_speedup(
    ours: Callable[[], object], theirs: Callable[[], object], pairs: int
) -> float:
    """Median over ``pairs`` back-to-back CPU runs of theirs / ours.

    Run back to back, both see the same load from other processes. A best-of-N taken for each one at
    a different time does not ensure that.
    """
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


def copy_bandwidth(device: torch.device) -> float:
    """Bytes/s (read + write) of a 1 GiB device-to-device copy.

    It is the median of ``triton.testing.do_bench``. This is the ceiling that memory-bound kernels
    are held against.
    """
    import triton.testing

    source, target = torch.empty(1 << 28, device=device), torch.empty(1 << 28, device=device)
    seconds = triton.testing.do_bench(lambda: target.copy_(source), return_mode="median") * 1e-3
    return 2 * source.numel() * source.element_size() / seconds


def device_name(device: torch.device) -> str:
    """What a results table names the device by: the GPU model, or the CPU and its thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


if __name__ == "__main__":  # gpu_check.sh's device line
    import argparse

    argparse.ArgumentParser(
        description="Print the CUDA device, its copy bandwidth and torch's version."
    ).parse_args()
    cuda = torch.device("cuda")
    print(
        f"{device_name(cuda)}: copy bandwidth {copy_bandwidth(cuda) / 1e9:.0f} GB/s (1 GiB device-to-device, "
        f"read + write), torch {torch.__version__}"
    )
