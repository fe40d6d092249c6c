"""The encoder's stride-2 average pool + LayerNorm: fused Triton kernel vs the unfused torch ops.

    python benchmarks_perf/bench_pool.py                     # CPU: torch path only
    python benchmarks_perf/bench_pool.py --device cuda --batch 32

It prints one Markdown table per dtype. The rows are forward and forward + backward. Each row gives
milliseconds, GB/s of compulsory traffic against the measured copy bandwidth, and the speed-up over
torch. The forward's traffic is reading x and writing y. The backward adds reading x and dy and
writing dx. The shape is the encoder's: x [batch, 1500 frames, 1280 channels].
"""

from __future__ import annotations

import argparse
import functools

import torch

from qwen_audio.kernels import pool_layer_norm

from _timing import device_name, measure_ms, pass_or_miss

FRAMES, CHANNELS = 1500, 1280
COPY_BANDWIDTH_TARGET = 0.7  # benchmarks_perf/README.md, for batches of 16 or more
# issue 33: the bf16 forward reads half the bytes, so launch overheads weigh more
BF16_FORWARD_TARGET = 0.8


def bench_dtype(batch: int, dtype: torch.dtype, device: torch.device, repeats: int) -> None:
    x = torch.randn(batch, FRAMES, CHANNELS, device=device, dtype=dtype, requires_grad=True)
    weight = torch.randn(CHANNELS, device=device, dtype=dtype, requires_grad=True)
    bias = torch.randn(CHANNELS, device=device, dtype=dtype, requires_grad=True)
    dy = torch.randn(batch, FRAMES // 2, CHANNELS, device=device, dtype=dtype)
    x_bytes = x.numel() * x.element_size()
    copy = torch.empty_like(x, requires_grad=False)
    copy_bytes_per_s = (
        2 * x_bytes / (measure_ms(lambda: copy.copy_(x.detach()), device, repeats) * 1e-3)
    )
    traffic = {
        "forward": 1.5 * x_bytes,
        "forward + backward": 4 * x_bytes,
    }  # y and dy are half of x

    backends = ["torch"] + (["triton"] if device.type == "cuda" else [])
    rows = []
    for backend in backends:
        forward = functools.partial(pool_layer_norm, x, weight, bias, 1e-5, kernel_backend=backend)
        with torch.no_grad():
            rows.append((backend, "forward", measure_ms(forward, device, repeats)))
        # autograd.grad returns the gradients, so repeats do not accumulate into .grad
        backward = lambda forward=forward: torch.autograd.grad(forward(), (x, weight, bias), dy)  # noqa: E731
        rows.append((backend, "forward + backward", measure_ms(backward, device, repeats)))
    torch_ms = {pass_: ms for backend, pass_, ms in rows if backend == "torch"}

    print(
        f"\n{dtype}, x [{batch}, {FRAMES}, {CHANNELS}], copy bandwidth {copy_bytes_per_s / 1e9:.0f} GB/s\n"
    )
    print("| backend | pass | ms | GB/s | of copy BW | vs torch |")
    print("|---|---|---|---|---|---|")
    for backend, pass_, ms in rows:
        gbps = traffic[pass_] / (ms * 1e-3)
        print(
            f"| {backend} | {pass_} | {ms:.3f} | {gbps / 1e9:.0f} | {gbps / copy_bytes_per_s:.0%} | "
            f"{torch_ms[pass_] / ms:.2f}x |"
        )
    print()
    for backend, pass_, ms in rows:
        if backend == "triton":
            fraction = traffic[pass_] / (ms * 1e-3) / copy_bytes_per_s
            bf16_forward = (dtype, pass_) == (torch.bfloat16, "forward")
            target = BF16_FORWARD_TARGET if bf16_forward else COPY_BANDWIDTH_TARGET
            print(
                f"target: triton pool + LayerNorm, {dtype}, {pass_}, batch {batch}, at {fraction:.0%} of copy "
                f"bandwidth (>= {target:.0%}): {pass_or_miss(fraction >= target)}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--batch", type=int, default=None, help="clips per batch (default: 2 CPU, 32 CUDA)"
    )
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per case on CPU")
    args = parser.parse_args()
    device = torch.device(args.device)
    batch = args.batch or (32 if device.type == "cuda" else 2)
    name = device_name(device)
    print(f"pool + LayerNorm on {name}, torch {torch.__version__}")
    for dtype in (torch.float32, torch.bfloat16):
        bench_dtype(batch, dtype, device, args.repeats)


if __name__ == "__main__":
    main()
