"""Peak memory of generation's prefill: logits at every prompt position against the last one only.

    python benchmarks_perf/bench_prefill.py [--audio-seconds 30]

The prompt is one ``<audio>`` span of a 30 s clip. It holds 750 audio tokens + ``<audio>`` and
``</audio>``: 752 positions. The model is the tiny preset with the released head (155,947 rows). So
the head dominates as it does at full size, and the run fits a CPU.

Each arm is one prefill forward (no grad, fp32, what ``generate_steps`` calls) in a fresh
interpreter of its own. The "every position" arm computes ``lm_head`` at all 752 positions (752 x
155,947 logits), as prefill did before issue 19. The "last position" arm computes it only at
:func:`~qwen_audio.model.last_tokens`, as prefill does.

The peak is Linux's resident-set high-water mark (``VmHWM``) less the resident set at that moment.
``VmHWM`` is reset through ``/proc/self/clear_refs`` just before the forward. ``tracemalloc`` would
not do, because torch's CPU allocations are invisible to it. Both arms must pick the same next
token.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

import qwen_audio
from qwen_audio.audio import SAMPLE_RATE
from qwen_audio.config import QwenAudioConfig
from qwen_audio.lengths import audio_lengths
from qwen_audio.model import QwenAudio, last_tokens

RELEASED_VOCAB = 155947
ARMS = {"every position": "every", "last position": "last"}
MIB = 1 << 20


def prefill_model() -> QwenAudio:
    """The tiny preset with the released vocabulary and ``<audio>`` id.

    Its weights are seeded, in fp32, and the model is in eval mode.
    """
    tiny = QwenAudioConfig.from_name("tiny")
    config = dataclasses.replace(
        tiny,
        audio_start_id=155163,
        decoder=dataclasses.replace(tiny.decoder, vocab_size=RELEASED_VOCAB),
    )
    torch.manual_seed(0)
    return QwenAudio(config).eval()


def audio_prompt(model: QwenAudio, seconds: float) -> dict[str, torch.Tensor]:
    """One clip's ``<audio>`` span with its seeded random mel, as model inputs.

    The span holds placeholders between the tags.
    """
    lengths = audio_lengths(int(seconds * SAMPLE_RATE))
    start = model.config.audio_start_id
    ids = torch.tensor([[start] + [0] * lengths.audio_tokens + [start + 1]])
    mel = torch.randn(
        1,
        model.config.encoder.n_mels,
        lengths.mel_frames,
        generator=torch.Generator().manual_seed(0),
    )
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "audio_mel": mel,
        "audio_mel_lengths": torch.tensor([lengths.mel_frames]),
    }


def _kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def run_arm(arm: str, seconds: float) -> dict:
    """One prefill forward and what it used.

    Returns its peak resident memory above the resident set before it, in bytes, with the positions,
    the logits' size and shape, and the next token.
    """
    model = prefill_model()
    inputs = audio_prompt(model, seconds)
    logits_at = last_tokens(inputs["attention_mask"]) if arm == "last" else None
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # VmHWM := VmRSS
    before = _kib("VmRSS")
    with torch.no_grad():
        logits = model(**inputs, logits_at=logits_at).logits
    peak = _kib("VmHWM") - before
    return {
        "positions": inputs["input_ids"].shape[1],
        "peak_bytes": peak * 1024,
        "logits_bytes": logits.numel() * logits.element_size(),
        "logits_shape": list(logits.shape),
        "next_token": int(logits.flatten(0, -2)[-1].argmax()),
    }


def measure(arm: str, seconds: float) -> dict:
    """:func:`run_arm` in a fresh interpreter that imports this process's ``qwen_audio``.

    A fresh interpreter per arm keeps either arm from seeing the other's freed pages.
    """
    package_root = str(Path(next(iter(qwen_audio.__path__))).resolve().parent)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        [sys.executable, __file__, "--arm", arm, "--audio-seconds", str(seconds)],
        capture_output=True,
        text=True,
        env=env,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the {arm!r} arm exited with {done.returncode}:\n{done.stderr}")
    return json.loads(done.stdout.splitlines()[-1])


def report(results: dict[str, dict]) -> list[str]:
    """The Markdown table of each arm's peak and logits, in MiB, with the ratio to the first arm."""
    first = next(iter(results.values()))["peak_bytes"]
    lines = [
        "| prefill logits at | logits shape | logits MiB | peak MiB | peak vs every position |",
        "|---|---|---|---|---|",
    ]
    for name, result in results.items():
        lines.append(
            f"| {name} | {' x '.join(map(str, result['logits_shape']))} | "
            f"{result['logits_bytes'] / MIB:.1f} | {result['peak_bytes'] / MIB:.1f} | "
            f"{result['peak_bytes'] / first:.3f}x |"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--audio-seconds", type=float, default=30.0, help="the clip's length (30 s: 752 positions)"
    )
    parser.add_argument(
        "--arm", choices=sorted(ARMS.values()), help=argparse.SUPPRESS
    )  # one arm's child process
    args = parser.parse_args(argv)
    if not 0 < args.audio_seconds <= 30:
        parser.error(f"--audio-seconds must lie in (0, 30], got {args.audio_seconds}")
    if not Path("/proc/self/clear_refs").exists():
        parser.error("needs Linux's /proc/self/clear_refs to reset the peak resident set")
    if args.arm:
        print(json.dumps(run_arm(args.arm, args.audio_seconds)))
        return
    results = {name: measure(arm, args.audio_seconds) for name, arm in ARMS.items()}
    tokens = {result["next_token"] for result in results.values()}
    if len(tokens) != 1:
        raise RuntimeError(f"the arms picked different next tokens: {tokens}")
    positions = results["every position"]["positions"]
    print(
        f"prefill of one {args.audio_seconds:g} s audio prompt ({positions} positions), tiny preset with the "
        f"released {RELEASED_VOCAB}-row head, fp32, CPU, torch {torch.__version__}; next token {tokens.pop()} "
        "in both arms\n"
    )
    print("\n".join(report(results)))


if __name__ == "__main__":
    main()
