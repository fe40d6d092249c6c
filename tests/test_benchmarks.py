"""The performance benchmarks run on CPU at their small sizes and print their tables.

No timing is asserted. What they print is checked against independent numbers: attention outputs
against SDPA run per sequence, generated tokens against transformers' Qwen2ForCausalLM, FLOP counts
against hand-worked cases, and the benchmarked training step against what stage 1 must do (encoder
updated, LLM untouched).
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qwen_audio.config import QwenAudioConfig

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks_perf"


@pytest.fixture
def bench(monkeypatch):
    """Import a benchmark script as its own folder on sys.path makes it importable.

    The script imports ``_timing``.
    """
    monkeypatch.syspath_prepend(str(BENCHMARKS))

    def load(name: str):
        sys.modules.pop(name, None)
        return importlib.import_module(name)

    return load


def table_rows(output: str, header: str) -> list[list[str]]:
    """Cells of every row of each Markdown table whose header line is ``header``."""
    rows, inside = [], False
    for line in output.splitlines():
        if line == header:
            inside = True
        elif inside and line.startswith("|") and not line.startswith("|---"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
        elif not line.startswith("|"):
            inside = False
    return rows


def test_attention_flops_count_real_pairs_only(bench):
    attention = bench("bench_attention")
    lengths = torch.tensor([2, 3])
    # 2 heads x 4 dims; non-causal pairs 2^2 + 3^2 = 13, causal 3 + 6 = 9; 4 FLOPs per pair per
    # head-dim
    assert attention.Case("e", False, lengths, 2, 4).flops(False) == 4 * 13 * 8
    assert attention.Case("d", True, lengths, 2, 4).flops(False) == 4 * 9 * 8
    assert attention.Case("d", True, lengths, 2, 4).flops(True) == 4 * 9 * 8 * 3.5


def test_attention_full_cases_follow_the_model_shapes(bench):
    attention = bench("bench_attention")
    encoder, decoder = attention.full_cases(torch.Generator().manual_seed(0))
    # 1 s -> 100 mel frames -> 50 encoder frames; 30 s -> 1500 (the encoder's n_ctx); d = 20 x 64 =
    # 1280
    assert (
        50 <= int(encoder.lengths.min())
        and int(encoder.lengths.max()) <= 1500
        and not encoder.causal
    )
    assert (encoder.heads, encoder.head_dim) == (20, 64)
    assert (
        16 <= int(decoder.lengths.min()) and int(decoder.lengths.max()) <= 2048 and decoder.causal
    )
    assert (decoder.heads, decoder.head_dim) == (32, 128)


def test_bench_attention_main_on_cpu(bench, capsys):
    bench("bench_attention").main(["--device", "cpu", "--repeats", "1"])
    output = capsys.readouterr().out
    rows = table_rows(
        output,
        "| implementation | pass | ms | TFLOP/s (real tokens) | vs padded sdpa | max abs diff |",
    )
    assert len(rows) == 2 * (
        2 + 2 * 2
    )  # two cases: two skipped backends, sdpa and the reference x two passes
    skipped = {row[0] for row in rows if row[1].startswith("skipped")}
    assert skipped == {"varlen", "flash_attn"}
    assert all("needs CUDA" in row[1] for row in rows if row[1].startswith("skipped"))
    timed = [row for row in rows if not row[1].startswith("skipped")]
    assert {row[1] for row in timed} == {"forward", "forward + backward"}
    for row in timed:
        assert float(row[2]) > 0 and float(row[3]) > 0
        assert float(row[5]) < 1e-4  # fp32: equal to SDPA run on each sequence alone
    assert all(row[4] == "1.00x" for row in timed if row[0] == "sdpa")


def test_bench_train_step_updates_the_encoder_only(bench):
    train = bench("bench_train_step")
    config = QwenAudioConfig.from_name("tiny")
    torch.manual_seed(0)
    module, optimizer = train.build_stage1(
        config, torch.device("cpu"), activation_checkpointing=False
    )
    batch = train.stage1_batch(
        config, 2, 2.0, torch.Generator().manual_seed(0), torch.device("cpu")
    )
    before = {name: p.detach().clone() for name, p in module.model.named_parameters()}
    loss = train.train_step(module, optimizer, batch)
    assert torch.isfinite(loss)
    for name, param in module.model.named_parameters():
        changed = not torch.equal(param, before[name])
        assert changed == name.startswith("transformer.audio."), name
    # labels: the tokens after </audio> (the target), labelled with themselves; prompt, audio and
    # padding ignored
    lengths = batch["attention_mask"].sum(1)
    for ids, labels, length in zip(batch["input_ids"], batch["labels"], lengths, strict=True):
        end = int((ids == config.audio_end_id).nonzero())
        assert (labels[: end + 1] == -100).all() and (labels[length:] == -100).all()
        assert end + 1 < length and torch.equal(labels[end + 1 : length], ids[end + 1 : length])


def test_bench_train_step_main_on_cpu(bench, capsys):
    bench("bench_train_step").main(
        ["--device", "cpu", "--repeats", "1", "--clips", "2", "--max-seconds", "2"]
    )
    output = capsys.readouterr().out
    header = (
        "| configuration | ms / step | tokens / s | frames / s | TFLOP/s | MFU | "
        "MFU (executed) | vs sdpa |"
    )
    rows = table_rows(output, header)
    assert [row[0] for row in rows] == ["flash_attn", "varlen", "sdpa"]
    assert all(row[1].startswith("skipped") and "needs CUDA" in row[1] for row in rows[:2])
    sdpa = rows[2]
    assert float(sdpa[1]) > 0 and float(sdpa[2]) > 0 and float(sdpa[3]) > 0
    assert sdpa[5:] == ["-", "-", "1.00x"]  # no peak FLOP/s known for a CPU
    assert "peak unknown" in output


def test_bench_train_step_profile_splits_the_step_into_categories_that_sum_to_the_total(bench):
    train = bench("bench_train_step")
    config = QwenAudioConfig.from_name("tiny")
    torch.manual_seed(0)
    module, optimizer = train.build_stage1(
        config, torch.device("cpu"), activation_checkpointing=False
    )
    batch = train.stage1_batch(
        config, 2, 2.0, torch.Generator().manual_seed(0), torch.device("cpu")
    )
    times = train.profiled_times(
        lambda: train.train_step(module, optimizer, batch, mel_in_step=True), torch.device("cpu")
    )
    breakdown = train.time_breakdown(times)
    assert tuple(breakdown) == train.CATEGORIES
    assert sum(breakdown.values()) == pytest.approx(sum(us for _, us in times), rel=1e-9)
    names = {name for name, _ in times}
    assert "aten::stft" in names  # the log-mel ran inside the profiled step
    # SDPA and the Linear layers ran, each in its own category; on CPU no Triton kernel runs.
    assert (
        breakdown["attention"] > 0
        and breakdown["matrix products"] > 0
        and breakdown["the rest"] > 0
    )
    assert breakdown["our Triton kernels"] == 0


@pytest.mark.parametrize(
    ("name", "category"),
    [
        ("_pool_layer_norm_backward_kernel", "our Triton kernels"),
        ("_mel_epilogue_kernel", "our Triton kernels"),
        ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention"),
        # FA4's CuTe kernels are also CUTLASS
        ("kernel_cutlass_FlashAttentionForwardSm90_0", "attention"),
        ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", "matrix products"),
        ("aten::addmm", "matrix products"),
        (
            "void at::native::vectorized_elementwise_kernel<4, at::native::GeluCUDAKernelImpl>",
            "the rest",
        ),
        ("aten::add_", "the rest"),
    ],
)
def test_bench_train_step_categorises_kernel_names(bench, name, category):
    assert bench("bench_train_step").categorise(name) == category


def test_mel_in_step_gives_the_dataloaders_features(bench):
    """The waveforms the step turns into log-mel give, clip by clip, what ``audio_features`` gives a
    worker."""
    from qwen_audio.audio import audio_features

    train = bench("bench_train_step")
    config = QwenAudioConfig.from_name("tiny")
    batch = train.stage1_batch(
        config, 3, 2.0, torch.Generator().manual_seed(1), torch.device("cpu")
    )
    mel = train.with_mel_from_waveforms(batch)["audio_mel"]
    for row, waveform in zip(mel, batch["waveforms"], strict=True):
        samples = int(waveform.nonzero().max()) + 1  # noise up to the clip's end, zeros after
        expected, _ = audio_features(waveform[:samples], "test", config.encoder.n_mels)
        # the batch is as wide as its longest clip's mel
        width = min(row.shape[-1], expected.shape[-1])
        assert width >= samples // 160
        torch.testing.assert_close(row[:, :width], expected[:, :width], rtol=0, atol=1e-5)


def test_bench_generate_main_agrees_with_transformers_and_the_growing_cache(bench, capsys):
    bench("bench_generate").main(["--device", "cpu", "--repeats", "1", "--new-tokens", "8"])
    output = capsys.readouterr().out
    assert re.search(
        r"token agreement 100\.0%, rows identical 4/4; growing-cache tokens equal ours: True",
        output,
    )
    rows = table_rows(
        output,
        "| implementation | batch | ms / call | ms / token (per row) | new tokens / s "
        "| vs growing cache |",
    )
    static, growing = (
        "qwen_audio generate (static cache)",
        "growing cache (torch.cat, sync per step; before issue 32)",
    )
    assert [(row[0], row[1]) for row in rows] == [
        (static, "4"),
        (growing, "4"),
        ("transformers Qwen2ForCausalLM.generate", "4"),
        (static, "1"),
        (growing, "1"),
    ]
    assert all(float(row[2]) > 0 and float(row[4]) > 0 for row in rows)
    assert rows[1][5] == rows[4][5] == "1.00x"


def test_bf16_generation_agrees_with_the_float64_reference_on_the_first_token(bench):
    """Issue 36: our bf16 path (weights, activations and KV cache in bf16) picks the float64
    reference's first token on every well-conditioned prompt, and its logits err no more than
    transformers' bf16 path does."""
    agreement = bench("bench_bf16_agreement")
    config = QwenAudioConfig.from_name("tiny")
    prompts = agreement.random_prompts(
        12, 8, 32, config.decoder.vocab_size, torch.Generator().manual_seed(3)
    )
    conditioned, results = agreement.compare(
        config, torch.device("cpu"), prompts, new_tokens=4, seed=3
    )
    ours, theirs = results["qwen_audio bf16"], results["transformers bf16"]
    # most prompts are well-conditioned
    assert ours.conditioned_prompts == int(conditioned[:, 0].sum()) >= 8
    assert ours.first_token_conditioned == 1.0 and ours.teacher_forced_conditioned == 1.0
    # the yardstick itself agrees where it says it should
    assert theirs.first_token_conditioned == 1.0
    assert 0 < ours.median_logit_error <= 2 * theirs.median_logit_error


def _gpu_check_dry_run(tmp_path: Path, budget_s: int) -> tuple[subprocess.CompletedProcess, str]:
    """``gpu_check.sh --dry-run`` with PYTHON a stub that prints one target line per benchmark, so
    the script's own logic (steps, budget, summary, the appended tables) runs in a second; returns
    the run and the tables."""
    stub = tmp_path / "python"
    stub.write_text(
        '#!/usr/bin/env bash\n[[ $1 == -c ]] && exit 0\necho "target: stub of $*: PASS"\n'
    )
    stub.chmod(0o755)
    run = subprocess.run(
        ["bash", str(BENCHMARKS / "gpu_check.sh"), "--dry-run"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHON": str(stub), "GPU_CHECK_BUDGET_S": str(budget_s)},
        timeout=60,
    )
    tables = Path(re.search(r"tables go to (\S+)", run.stdout).group(1))
    return run, tables.read_text()


def test_gpu_check_dry_run_runs_every_step_and_appends_its_summary(tmp_path):
    run, tables = _gpu_check_dry_run(tmp_path, budget_s=480)
    assert run.returncode == 0, run.stdout + run.stderr
    steps = [
        "device",
        "cuda_tests",
        "bench_attention",
        "bench_mel",
        "bench_pool",
        "bench_train_step",
        "bench_bf16_agreement",
        "bench_generate",
    ]
    summary = run.stdout.split("=== summary")[1]
    assert [
        line.split(":")[0] for line in summary.splitlines()[1:] if not line.startswith(" ")
    ] == steps
    for step in steps[2:]:  # each benchmark ran as --help, and its target line reached the summary
        assert re.search(
            rf"  target: stub of .*benchmarks_perf/{step}\.py .*--help: PASS", summary
        ), step
    assert "--collect-only" in run.stdout  # the cuda tests are collected, not run
    assert tables.startswith("\n## gpu_check.sh on dry run, no GPU, ") and "Summary:" in tables
    assert "bench_train_step.py --device cuda --compile --mel-in-step" in run.stdout


def test_gpu_check_skips_steps_past_its_budget(tmp_path):
    run, tables = _gpu_check_dry_run(tmp_path, budget_s=0)
    assert run.returncode == 1
    assert tables.count("SKIPPED, budget spent") == 8


def test_bench_generate_rejects_lengths_beyond_the_trained_context(bench):
    with pytest.raises(SystemExit):
        bench("bench_generate").main(
            ["--device", "cpu", "--prompt-tokens", "4", "2048", "--new-tokens", "8"]
        )


def test_bench_prefill_main_shows_the_last_position_logits_only(bench, capsys):
    bench("bench_prefill").main(
        ["--audio-seconds", "10"]
    )  # 250 audio tokens + the tags: 252 positions
    output = capsys.readouterr().out
    assert "(252 positions)" in output and "in both arms" in output
    rows = table_rows(
        output,
        "| prefill logits at | logits shape | logits MiB | peak MiB | peak vs every position |",
    )
    full = (
        252 * 155947 * 4 / 2**20
    )  # 150 MiB, well above what the rest of a prefill holds (about 35 MiB)
    assert [row[:3] for row in rows] == [
        ["every position", "1 x 252 x 155947", f"{full:.1f}"],
        ["last position", "1 x 155947", f"{155947 * 4 / 2**20:.1f}"],
    ]
    every, last = (float(row[3]) for row in rows)
    assert (
        every >= full and last < every
    )  # the full logits are resident at the peak; the lean arm's are not


def test_bench_startup_report_holds_each_command_against_import_torch(bench):
    startup = bench("bench_startup")
    medians = {
        startup.BASELINE: 2.0,
        "python -m qwen_audio.generate --help": 3.0,
        "python -m qwen_audio.chat --help": 3.2,
        "python -m qwen_audio.serve --help": 0.1,
    }
    assert list(medians) == list(startup.COMMANDS)
    lines = startup.report(medians)
    assert lines[2] == "| `python -c 'import torch'` | 2.00 | 1.00x |  |"
    assert (
        lines[3] == "| `python -m qwen_audio.generate --help` | 3.00 | 1.50x | PASS |"
    )  # the bound passes
    assert lines[4] == "| `python -m qwen_audio.chat --help` | 3.20 | 1.60x | MISS |"
    assert (
        lines[-1]
        == "target: `python -m qwen_audio.serve --help` 0.05x import torch (<= 1.5x): PASS"
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the script runs the whole check")
def test_gpu_check_without_cuda_says_so_and_writes_nothing():
    script = BENCHMARKS / "gpu_check.sh"
    assert (
        subprocess.run(["bash", "-n", str(script)]).returncode == 0
    )  # the whole script parses, not just its start
    results = (BENCHMARKS / "RESULTS.md").read_text()
    run = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "no CUDA device here" in run.stdout and "nothing written" in run.stdout
    assert (BENCHMARKS / "RESULTS.md").read_text() == results


@pytest.mark.cuda
def test_bench_attention_times_the_varlen_backend_on_cuda(bench, capsys):
    bench("bench_attention").main(["--device", "cuda", "--small", "--seed", "1"])
    rows = table_rows(
        capsys.readouterr().out,
        "| implementation | pass | ms | TFLOP/s (real tokens) | vs padded sdpa | max abs diff |",
    )
    varlen_forward = [row for row in rows if row[0] == "varlen" and row[1] == "forward"]
    assert len(varlen_forward) == 2  # encoder and decoder
    assert all(float(row[5]) < 3e-2 for row in varlen_forward)  # bf16 against SDPA per sequence


@pytest.mark.cuda
def test_bench_train_step_times_the_varlen_backend_on_cuda(bench, capsys):
    bench("bench_train_step").main(
        ["--device", "cuda", "--small", "--clips", "2", "--max-seconds", "2"]
    )
    rows = table_rows(
        capsys.readouterr().out,
        "| attention | ms / step | tokens / s | frames / s | TFLOP/s | MFU | MFU (executed) | vs sdpa |",
    )
    varlen = next(row for row in rows if row[0] == "varlen")
    assert float(varlen[1]) > 0 and float(varlen[2]) > 0
