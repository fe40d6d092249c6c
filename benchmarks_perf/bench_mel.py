"""Log-mel of 30 s clip batches: our backends vs openai-whisper, transformers, torchaudio, nnAudio.

    python benchmarks_perf/bench_mel.py                # CPU: 8 x 30 s on 2 threads (~1 minute)
    python benchmarks_perf/bench_mel.py --device cuda  # 64 x 30 s

The script prints one Markdown table. It gives the time per batch, audio-hours per second and the
speed-up against openai-whisper. That baseline is openai-whisper's own ``log_mel_spectrogram``, one
clip per call, as Whisper runs it. The table also gives the largest difference from this project's
torch reference (all compute Whisper's features). On CUDA it adds GB/s of compulsory traffic (audio
in, log-mel out) against the measured copy bandwidth.

Then it prints one PASS/MISS line per target of ``benchmarks_perf/README.md``. On CPU the target is
the torch path (the one DataLoader workers and ``generate`` run) >= 1.2x openai-whisper, as the
median of interleaved pairs of calls. On CUDA the targets are the cuFFT + Triton path >= 1.5x
torchaudio's ``MelSpectrogram`` + log and >= 10x openai-whisper. All are timed in this run.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torchaudio
import whisper
from nnAudio.features import MelSpectrogram as NnAudioMel
from transformers import WhisperFeatureExtractor

from qwen_audio.kernels import log_mel
from qwen_audio.lengths import N_SAMPLES
from qwen_audio.whisper_mel import DYNAMIC_RANGE, HOP_LENGTH, LOG_MEL_FLOOR, N_FFT, SAMPLE_RATE

from _timing import copy_bandwidth, interleaved_speedup, measure_ms, pass_or_miss


def whisper_normalise(power_mel: torch.Tensor) -> torch.Tensor:
    """log10 clamp, per-example ``max - 8`` floor and ``(x + 4) / 4``.

    The input is a ``[B, n_mels, frames]`` mel power.
    """
    log_spec = power_mel.clamp(min=LOG_MEL_FLOOR).log10()
    log_spec = torch.maximum(log_spec, log_spec.amax(dim=(-2, -1), keepdim=True) - DYNAMIC_RANGE)
    return (log_spec + 4.0) / 4.0


def candidates(audio: torch.Tensor) -> dict[str, Callable[[], torch.Tensor]]:
    device = audio.device
    torchaudio_mel = torchaudio.transforms.MelSpectrogram(
        SAMPLE_RATE,
        n_fft=N_FFT,
        hop_length=HOP_LENGTH,
        n_mels=80,
        norm="slaney",
        mel_scale="slaney",
    ).to(device)
    nnaudio_mel = NnAudioMel(
        sr=SAMPLE_RATE,
        n_fft=N_FFT,
        hop_length=HOP_LENGTH,
        n_mels=80,
        fmin=0.0,
        fmax=SAMPLE_RATE / 2,
        verbose=False,
    ).to(device)
    extractor = WhisperFeatureExtractor(feature_size=80)
    clips = list(audio.cpu().numpy())
    runs = {"qwen_audio torch": lambda: log_mel(audio, 80, kernel_backend="torch")}
    if device.type == "cuda":
        runs["qwen_audio triton"] = lambda: log_mel(audio, 80, kernel_backend="triton")
    runs |= {
        WHISPER: lambda: torch.stack([whisper.log_mel_spectrogram(clip) for clip in audio]),
        "transformers WhisperFeatureExtractor": lambda: (
            extractor(
                clips, sampling_rate=SAMPLE_RATE, return_tensors="pt", device=str(device)
            ).input_features
        ),
        TORCHAUDIO: lambda: whisper_normalise(torchaudio_mel(audio)[..., :-1]),
        "nnAudio MelSpectrogram + log": lambda: whisper_normalise(nnaudio_mel(audio)[..., :-1]),
    }
    return runs


CPU_TARGET, WHISPER_TARGET, TORCHAUDIO_TARGET = 1.2, 10.0, 1.5  # benchmarks_perf/README.md
WHISPER = "openai-whisper (per clip)"
TORCHAUDIO = "torchaudio MelSpectrogram + log"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--batch", type=int, default=None, help="30 s clips per batch (default: 8 CPU, 64 CUDA)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per candidate on CPU")
    parser.add_argument(
        "--pairs", type=int, default=15, help="interleaved (whisper, ours) pairs for the CPU ratio"
    )
    parser.add_argument(
        "--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)"
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if not cuda:
        torch.set_num_threads(args.threads)
    batch = args.batch or (64 if cuda else 8)
    generator = torch.Generator().manual_seed(0)
    envelope = 0.5 * (1 + torch.sin(torch.linspace(0, 240 * torch.pi, N_SAMPLES)))
    audio = (0.1 * torch.randn(batch, N_SAMPLES, generator=generator) * envelope).to(device)

    reference = log_mel(audio, 80, kernel_backend="torch")
    hours = batch * N_SAMPLES / SAMPLE_RATE / 3600
    runs = candidates(audio)
    results = {}
    for name, run in runs.items():
        difference = (run().to(device) - reference).abs().max().item()
        results[name] = (measure_ms(run, device, args.repeats), difference)

    baseline_ms = results[WHISPER][0]
    if cuda:
        copy_bytes_per_s = copy_bandwidth(device)
        traffic = batch * N_SAMPLES * 4 + reference.numel() * 4
    print(
        f"log-mel, {batch} x 30 s clips, {torch.cuda.get_device_name(device) if cuda else 'CPU'} "
        f"({torch.get_num_threads()} threads), torch {torch.__version__}\n"
    )
    header = (
        "| implementation | ms / batch | audio h / s | vs openai-whisper | max abs diff vs ours |"
    )
    print(header + (" GB/s | of copy BW |" if cuda else ""))
    print("|---" * (header.count("|") - 1 + (2 if cuda else 0)) + "|")
    for name, (ms, difference) in results.items():
        row = f"| {name} | {ms:.2f} | {hours / (ms * 1e-3):.1f} | {baseline_ms / ms:.2f}x | {difference:.1e} |"
        if cuda:
            gbps = traffic / (ms * 1e-3) / 1e9
            row += f" {gbps:.0f} | {gbps * 1e9 / copy_bytes_per_s:.0%} |"
        print(row)
    print()
    if cuda:
        ours_ms = results["qwen_audio triton"][0]
        for name, target in ((TORCHAUDIO, TORCHAUDIO_TARGET), (WHISPER, WHISPER_TARGET)):
            speedup = results[name][0] / ours_ms
            print(
                f"target: cuFFT + Triton log-mel {speedup:.2f}x {name} at {batch} x 30 s "
                f"(>= {target:g}x): {pass_or_miss(speedup >= target)}"
            )
    else:
        speedup = interleaved_speedup(runs["qwen_audio torch"], runs[WHISPER], args.pairs)
        print(
            f"target: torch log-mel {speedup:.2f}x openai-whisper (median of {args.pairs} interleaved pairs, "
            f"{batch} x 30 s, {torch.get_num_threads()} threads; >= {CPU_TARGET:g}x): "
            f"{pass_or_miss(speedup >= CPU_TARGET)}"
        )


if __name__ == "__main__":
    main()
