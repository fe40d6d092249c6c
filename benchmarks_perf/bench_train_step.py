"""One stage-1 training step per attention backend and MFU lever: tokens/s, MFU, where time goes.

    python benchmarks_perf/bench_train_step.py                   # CPU: the tiny preset, fp32
    python benchmarks_perf/bench_train_step.py --device cuda     # Qwen-Audio at full size, bf16
    # if the 7B LLM does not fit:
    python benchmarks_perf/bench_train_step.py --device cuda --decoder-layers 8
    # the levers:
    python benchmarks_perf/bench_train_step.py --device cuda --compile --mel-in-step --clips 24

The step is the recipe's: ``QwenAudioModule.training_step`` (SpecAugment, loss, metrics) with
``train="encoder"``, then backward, gradient clipping at 1.0 and AdamW over the module's parameter
groups. ``train="encoder"`` trains the encoder, pool, ln_post, proj and audio BOS/EOS. The LLM is
frozen, but gradients still flow through it to the audio. On CUDA the trained encoder keeps fp32
weights under bf16 autocast (bf16-mixed). There the frozen LLM is held in bf16 (no optimizer state,
no fp32 master copy needed), with activation checkpointing as in
``recipes/configs/pretrain/qwen_audio.yaml``. The batch has seeded clip durations. Each sample is a
short prompt, the clip's ``<audio>`` span and 3 target tokens per second of audio, right-padded as
``qwen_audio.data.collate`` pads.

Tokens/s counts decoder positions (text and audio spans, no padding), and frames/s the encoder's
frames. TFLOP/s is the module's ``flops_per_batch`` (6 x parameters x positions for encoder and
decoder alike) per second. MFU divides it by the device's dense bf16 peak. That formula charges the
frozen LLM for weight gradients it never computes, and its embedding table for products it never
runs. So "MFU (executed)" also counts the step's real matmul FLOPs: 6 x encoder parameters per
frame + 4 x LLM parameters except the embedding per position.

The table has one row per attention backend (``flash_attn`` is FlashAttention-4 where installed on
SM90+). Then, on the backend ``auto`` picks, it has one row per lever asked for. ``--compile`` runs
``torch.compile`` on each encoder block. ``--mel-in-step`` computes the log-mel in the step from the
batch's waveforms (the fused kernel on CUDA), instead of having it arrive from DataLoader workers.
Its time is charged to the step. ``--clips`` sets the micro-batch.

The last row is then profiled for one step (``torch.profiler``): device kernel time on CUDA,
operator self time on CPU. That time is split into attention, matrix products, this project's Triton
kernels and the rest, which sum to the total. The target line is MFU on executed FLOPs of the
fastest row >= 40 % (issue 33).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import warnings
from collections.abc import Callable, Iterable

import torch
from torch.profiler import ProfilerActivity, profile

from qwen_audio.audio import SAMPLE_RATE, log_mel_spectrogram
from qwen_audio.config import ATTENTION_BACKENDS, QwenAudioConfig
from qwen_audio.kernels import TRITON_KERNEL_NAMES
from qwen_audio.lengths import N_SAMPLES, audio_lengths, conv_frames
from qwen_audio.lit.flops import bf16_peak_flops
from qwen_audio.lit.module import QwenAudioModule
from qwen_audio.lit.optim import param_groups
from qwen_audio.modules.attention import resolve_attention_backend
from qwen_audio.whisper_mel import N_FFT

from _timing import device_name, measure_ms, pass_or_miss

BACKENDS = tuple(
    name for name in reversed(ATTENTION_BACKENDS) if name != "auto"
)  # fused ones first, sdpa last
BASELINE = "sdpa"
PROMPT_TOKENS = 8  # task tags before the audio span
TARGET_TOKENS_PER_SECOND = 3
PAD_ID = 0
MFU_TARGET = 0.40  # issue 33: executed FLOPs over the dense bf16 peak
CATEGORIES = ("attention", "matrix products", "our Triton kernels", "the rest")
ATTENTION_NAMES = ("attention", "flash", "fmha", "varlen", "sdpa")
MATMUL_NAMES = (
    "gemm",
    "xmma",
    "cublas",
    "cutlass",
    "aten::mm",
    "aten::addmm",
    "aten::bmm",
    "aten::matmul",
    "conv",
    "sm90_",
    "sm100_",
    "nvjet",
)


def stage1_batch(
    config: QwenAudioConfig,
    clips: int,
    max_seconds: float,
    generator: torch.Generator,
    device: torch.device,
) -> dict:
    """One clip per sample: prompt ids, ``<audio>`` span and target ids.

    The prompt has ``PROMPT_TOKENS`` ids. The target ids are the only labels.
    """
    durations = torch.empty(clips, dtype=torch.float64).uniform_(
        1.0, max_seconds, generator=generator
    )
    lengths = [audio_lengths(int(seconds * SAMPLE_RATE)) for seconds in durations]
    samples, labels = [], []
    for clip in lengths:
        prompt = torch.randint(1, config.audio_start_id, (PROMPT_TOKENS,), generator=generator)
        span = torch.tensor(
            [config.audio_start_id] + [PAD_ID] * clip.audio_tokens + [config.audio_end_id]
        )
        target_length = max(1, TARGET_TOKENS_PER_SECOND * clip.samples // SAMPLE_RATE)
        target = torch.randint(1, config.audio_start_id, (target_length,), generator=generator)
        samples.append(torch.cat([prompt, span, target]))
        labels.append(torch.cat([torch.full((len(prompt) + len(span),), -100), target]))
    pad = torch.nn.utils.rnn.pad_sequence
    mel_lengths = torch.tensor([clip.mel_frames for clip in lengths])
    mel = torch.randn(clips, config.encoder.n_mels, int(mel_lengths.max()), generator=generator)
    # Noise waveforms, zero past each clip and padded by 2 * N_FFT as audio_features pads, for
    # --mel-in-step.
    waveforms = torch.zeros(
        clips, min(N_SAMPLES, max(clip.samples for clip in lengths) + 2 * N_FFT)
    )
    for row, clip in zip(waveforms, lengths):
        row[: clip.samples] = 0.1 * torch.randn(clip.samples, generator=generator)
    batch = {
        "input_ids": pad(samples, batch_first=True, padding_value=PAD_ID),
        "attention_mask": pad([torch.ones_like(s) for s in samples], batch_first=True),
        "labels": pad(labels, batch_first=True, padding_value=-100),
        "audio_mel": mel,
        "audio_mel_lengths": mel_lengths,
        "waveforms": waveforms,
    }
    return {key: value.to(device) for key, value in batch.items()} | {"task": ["asr"] * clips}


def with_mel_from_waveforms(batch: dict) -> dict:
    """The batch with ``audio_mel`` computed here from its waveforms (the fused kernel on CUDA).

    The mel is as wide as the DataLoader's. This is the work ``--mel-in-step`` moves into the step.
    """
    width = batch["audio_mel"].shape[-1]
    mel = log_mel_spectrogram(batch["waveforms"], batch["audio_mel"].shape[1])[..., :width]
    return batch | {"audio_mel": mel}


def build_stage1(
    config: QwenAudioConfig, device: torch.device, activation_checkpointing: bool
) -> tuple[QwenAudioModule, torch.optim.Optimizer]:
    """The recipe's module for ``config`` on ``device``, and its AdamW.

    On CUDA the frozen LLM is in bf16.
    """
    module = QwenAudioModule(
        preset=config.name, train="encoder", activation_checkpointing=activation_checkpointing
    )
    module.config = config  # the preset with this run's overrides (--decoder-layers)
    with torch.device(device):
        module.configure_model()
    model = module.model
    if device.type == "cuda":
        for frozen in (
            model.transformer.wte,
            model.transformer.h,
            model.transformer.ln_f,
            model.lm_head,
        ):
            frozen.to(torch.bfloat16)
    hp = module.hparams
    groups = param_groups(
        model.named_parameters(), hp.lr, hp.weight_decay, hp.layer_decay, config.encoder.n_layer
    )
    return module, torch.optim.AdamW(groups, lr=hp.lr, betas=hp.betas, eps=hp.eps)


def train_step(
    module: QwenAudioModule,
    optimizer: torch.optim.Optimizer,
    batch: dict,
    mel_in_step: bool = False,
) -> torch.Tensor:
    """One training step: forward (bf16 autocast on CUDA), backward, clip at 1.0, AdamW step.

    Returns the loss. With ``mel_in_step``, the log-mel is computed first, from the batch's
    waveforms.
    """
    optimizer.zero_grad(set_to_none=True)
    device = batch["input_ids"].device
    if mel_in_step:
        batch = with_mel_from_waveforms(batch)
    with (
        warnings.catch_warnings(),
        torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"),
    ):
        warnings.filterwarnings(
            "ignore", message=r"You are trying to `self.log\(\)`"
        )  # no Trainer attached
        loss = module.training_step(batch, 0)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(
        [p for group in optimizer.param_groups for p in group["params"]], 1.0
    )
    optimizer.step()
    return loss


def use_attention_backend(module: QwenAudioModule, backend: str) -> None:
    """Set the attention backend of encoder and decoder.

    Both read their backend at every forward, so the same weights serve every row.
    """
    module.model.encoder.attention_backend = backend
    module.model.decoder.attention_backend = backend


def compile_encoder_blocks(module: QwenAudioModule) -> None:
    """``torch.compile`` each encoder block in place.

    The blocks are identical, so they share one compiled graph.
    """
    for block in module.model.encoder.blocks:
        block.compile()


def categorise(name: str) -> str:
    """Which of ``CATEGORIES`` a profiled kernel or operator belongs to, by its name."""
    lowered = name.lower()
    if any(kernel in name for kernel in TRITON_KERNEL_NAMES):
        return "our Triton kernels"
    if any(word in lowered for word in ATTENTION_NAMES):
        return "attention"
    if any(word in lowered for word in MATMUL_NAMES):
        return "matrix products"
    return "the rest"


def profiled_times(step: Callable[[], object], device: torch.device) -> list[tuple[str, float]]:
    """``(name, microseconds)`` of everything one call of ``step`` ran.

    On CUDA that is each kernel's device time. On CPU it is each operator's self time. Self times do
    not overlap, so they add up to the profiled time.
    """
    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        step()
        if cuda:
            torch.cuda.synchronize(device)
    if cuda:
        return [
            (event.name, event.device_time_total)
            for event in prof.events()
            if event.device_type == torch.autograd.DeviceType.CUDA
        ]
    return [(event.key, event.self_cpu_time_total) for event in prof.key_averages()]


def time_breakdown(times: Iterable[tuple[str, float]]) -> dict[str, float]:
    """Microseconds per category of ``CATEGORIES`` over profiled ``(name, microseconds)``.

    The categories sum to the total.
    """
    totals = dict.fromkeys(CATEGORIES, 0.0)
    for name, microseconds in times:
        totals[categorise(name)] += microseconds
    return totals


def print_breakdown(label: str, times: list[tuple[str, float]], cuda: bool) -> None:
    totals = time_breakdown(times)
    total = sum(microseconds for _, microseconds in times)
    what = "CUDA kernel time" if cuda else "CPU operator self time"
    print(
        f"\nwhere one step's time goes ({label}; torch.profiler, {what}, "
        f"total {total / 1e3:.1f} ms)\n"
    )
    print("| category | ms | share |")
    print("|---|---|---|")
    for category, microseconds in totals.items():
        print(f"| {category} | {microseconds / 1e3:.1f} | {microseconds / total:.0%} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help="the CPU sizes (the default on CPU)")
    parser.add_argument(
        "--model", default=None, help="config preset (default: qwen-audio, tiny with --small)"
    )
    parser.add_argument(
        "--decoder-layers", type=int, default=None, help="fewer LLM blocks than the preset"
    )
    parser.add_argument(
        "--clips",
        type=int,
        default=None,
        help="samples (one clip each) per batch (default: 16, 4 with --small)",
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="clip durations are uniform in [1, this] (default: 30, 4 with --small)",
    )
    parser.add_argument(
        "--activation-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="recompute blocks in backward (default: on for CUDA, as in the recipe; off on CPU)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timed steps per backend (CPU, and CUDA steps of a second or more)",
    )
    parser.add_argument(
        "--compile", action="store_true", help="add a row with torch.compile'd encoder blocks"
    )
    parser.add_argument(
        "--mel-in-step",
        action="store_true",
        help="add a row computing the log-mel in the step "
        "from waveforms (the fused kernel on CUDA) instead of in DataLoader workers",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    small = args.small or not cuda
    config = QwenAudioConfig.from_name(args.model or ("tiny" if small else "qwen-audio"))
    if args.decoder_layers:
        config = dataclasses.replace(
            config,
            decoder=dataclasses.replace(config.decoder, num_hidden_layers=args.decoder_layers),
        )
    checkpointing = cuda if args.activation_checkpointing is None else args.activation_checkpointing
    torch.manual_seed(args.seed)
    module, optimizer = build_stage1(config, device, checkpointing)
    batch = stage1_batch(
        config,
        args.clips or (4 if small else 16),
        args.max_seconds or (4.0 if small else 30.0),
        torch.Generator().manual_seed(args.seed),
        device,
    )
    tokens = int(batch["attention_mask"].sum())
    frames = int(conv_frames(batch["audio_mel_lengths"]).sum())
    encoder_params = sum(p.numel() for p in module.model.encoder.parameters())
    llm_params = sum(p.numel() for p in module.model.parameters()) - encoder_params
    embedding_params = module.model.transformer.wte.weight.numel()
    executed_flops = 6 * encoder_params * frames + 4 * (llm_params - embedding_params) * tokens

    dtype = torch.bfloat16 if cuda else torch.float32
    auto = resolve_attention_backend("auto", device, dtype)
    # (row label, attention backend, log-mel in step)
    arms = [(backend, backend, False) for backend in BACKENDS]
    if args.mel_in_step:
        arms.append((f"{auto} + log-mel in step", auto, True))
    if args.compile:  # last: compiling is in place, so every later row runs compiled blocks
        arms.append((f"{auto} + compiled encoder blocks", auto, args.mel_in_step))
    results: dict[str, float | str] = {}
    for label, backend, mel_in_step in arms:
        try:
            resolve_attention_backend(backend, device, dtype)
        except ValueError as err:
            results[label] = f"skipped: {err}"
            continue
        use_attention_backend(module, backend)
        if "compiled" in label:
            compile_encoder_blocks(module)
        step = functools.partial(train_step, module, optimizer, batch, mel_in_step)
        results[label] = measure_ms(step, device, args.repeats)
        print(f"measured {label}: {results[label]:.1f} ms / step", flush=True)  # kept if cut short
    model_flops = module.flops_per_batch
    peak = bf16_peak_flops(device)

    name = device_name(device)
    precision = "encoder fp32 + bf16 autocast, frozen LLM bf16" if cuda else "fp32"
    print(f"stage-1 training step, {name}, {precision}, torch {torch.__version__}\n")
    print(
        f"{config.name}: encoder {config.encoder.n_layer} x {config.encoder.n_state} ({encoder_params / 1e6:.1f} M "
        f"trained), LLM {config.decoder.num_hidden_layers} x {config.decoder.hidden_size} ({llm_params / 1e6:.1f} M "
        f"frozen); activation checkpointing {'on' if checkpointing else 'off'}; {len(batch['task'])} clips "
        f"(mel frames {batch['audio_mel_lengths'].tolist()}): {frames} encoder frames, {tokens} decoder tokens of "
        f"{batch['input_ids'].numel()} padded; flops_per_batch {model_flops / 1e12:.3g} TFLOP, executed "
        f"{executed_flops / 1e12:.3g} TFLOP; peak {f'{peak / 1e12:.0f} TFLOP/s bf16' if peak else 'unknown'}\n"
    )
    print(
        "| configuration | ms / step | tokens / s | frames / s | TFLOP/s | MFU | MFU (executed) | "
        f"vs {BASELINE} |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for backend, ms in results.items():
        if isinstance(ms, str):
            print(f"| {backend} | {ms} | - | - | - | - | - | - |")
            continue
        seconds = ms * 1e-3
        mfu = f"{model_flops / seconds / peak:.1%}" if peak else "-"
        executed_mfu = f"{executed_flops / seconds / peak:.1%}" if peak else "-"
        print(
            f"| {backend} | {ms:.1f} | {tokens / seconds:.0f} | {frames / seconds:.0f} | "
            f"{model_flops / seconds / 1e12:.3g} | {mfu} | {executed_mfu} | {results[BASELINE] / ms:.2f}x |"
        )
    label, backend, mel_in_step = arms[-1]
    print_breakdown(
        label,
        profiled_times(lambda: train_step(module, optimizer, batch, mel_in_step), device),
        cuda,
    )
    if cuda:
        timed = {label: ms for label, ms in results.items() if not isinstance(ms, str)}
        fastest = min(timed, key=timed.get)
        executed_mfu = executed_flops / (timed[fastest] * 1e-3) / peak if peak else 0.0
        print(
            f"\ntarget: stage-1 step MFU on executed FLOPs {executed_mfu:.1%} ({fastest}, "
            f"{len(batch['task'])} clips; >= {MFU_TARGET:.0%}): "
            f"{pass_or_miss(executed_mfu >= MFU_TARGET)}"
        )


if __name__ == "__main__":
    main()
