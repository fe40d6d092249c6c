"""The recipes for real: every YAML validates, and short demo runs (one process, and FSDP2 on 2 CPU
processes with gloo) resume from their checkpoints to exactly the losses of an uninterrupted run."""

import csv
import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from qwen_audio.data.demo import CORPUS_RECORD, corpus_record
from qwen_audio.data.demo.corpus import DEMO_VERSION, MANIFESTS
from qwen_audio.lit.callbacks import _cell

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "recipes" / "configs" / "pretrain").glob("*.yaml"))
DEMO = REPO / "recipes" / "configs" / "pretrain" / "demo.yaml"


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("demo-corpus")


def _run(args: list[str], demo_dir: Path, extra_path: Path | None = None, check: bool = True):
    env = {
        **os.environ,
        "QWEN_AUDIO_DEMO_DIR": str(demo_dir),
        "PYTHONPATH": os.pathsep.join(str(p) for p in (REPO, extra_path) if p),
    }
    result = subprocess.run(
        [sys.executable, "-m", "recipes.pretrain", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"recipe failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
        )
    return result


def _overrides(root: Path, max_steps: int, extra_callbacks: str = "") -> Path:
    """A second config on top of demo.yaml.

    It sets a tiny corpus, small batches, a checkpoint every 2 steps and CSV losses.
    """
    path = root / "override.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        trainer:
          max_steps: {max_steps}
          log_every_n_steps: 1
          enable_progress_bar: false
          num_sanity_val_steps: 0
          limit_val_batches: 0
          default_root_dir: {root}
          logger:
            class_path: lightning.pytorch.loggers.CSVLogger
            init_args: {{save_dir: {root}}}
          callbacks:
            - class_path: lightning.pytorch.callbacks.ModelCheckpoint
              init_args: {{dirpath: {root / "checkpoints"}, save_last: true, every_n_train_steps: 2, save_top_k: -1}}
        EXTRA
        data:
          corpus:
            init_args:
              size: 2
          max_seconds: 8
        """).replace("EXTRA\n", extra_callbacks + "\n" if extra_callbacks else "")
    )
    return path


INTERRUPT = textwrap.dedent("""\
    import os, signal
    import lightning as L

    class KillAtStep(L.Callback):
        \"\"\"SIGKILL, as a preempted or crashed job dies: nothing after the last checkpoint survives.\"\"\"
        def __init__(self, step: int):
            self.step = step

        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == self.step:
                os.kill(os.getpid(), signal.SIGKILL)

    class StopAtStep(L.Callback):
        \"\"\"Stop every rank after ``step`` (a SIGKILL of one rank would leave the others hanging in a
        collective).\"\"\"
        def __init__(self, step: int):
            self.step = step

        def on_train_batch_end(self, trainer, *args):
            trainer.should_stop = trainer.global_step >= self.step
    """)


def _losses(root: Path) -> dict[int, float]:
    """``train/loss`` by global step over every CSV log in ``root``.

    A resumed run writes a new version.
    """
    losses = {}
    for log in sorted(root.glob("lightning_logs/version_*/metrics.csv")):
        for row in csv.DictReader(log.open()):
            if row.get("train/loss"):
                losses[int(row["step"])] = float(row["train/loss"])
    return losses


@pytest.mark.parametrize(
    "config", CONFIGS, ids=lambda p: str(p.relative_to(REPO / "recipes" / "configs"))
)
def test_every_config_prints(config, demo_dir):
    printed = _run(["fit", "--config", str(config), "--print_config"], demo_dir).stdout
    assert "model:" in printed and "trainer:" in printed and "data:" in printed


def test_fsdp_config_is_complete(demo_dir):
    printed = _run(
        ["fit", "--config", "recipes/configs/pretrain/qwen_audio.yaml", "--print_config"], demo_dir
    ).stdout
    for expected in (
        "ModelParallelStrategy",
        "save_distributed_checkpoint: true",
        "precision: bf16-mixed",
        "activation_checkpointing: true",
        "train: encoder",
        "preset: qwen-audio",
    ):
        assert expected in printed


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_losses(tmp_path, demo_dir):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    straight.mkdir(), killed.mkdir()
    export = f"    - class_path: qwen_audio.lit.ExportPretrained\n      init_args: {{dirpath: {straight / 'export'}}}"
    _run(["fit", "--config", str(DEMO), "--config", str(_overrides(straight, 6, export))], demo_dir)
    # the export names the corpus it was trained on, for evaluation to read back
    corpus = demo_dir / f"demo-{DEMO_VERSION}-seed0-size2"
    names = (*(f"{m}.jsonl" for m in MANIFESTS), "items.json")
    manifests = b"".join((corpus / name).read_bytes() for name in names)
    assert json.loads((straight / "export" / CORPUS_RECORD).read_text()) == {
        **corpus_record(seed=0, size=2),
        "fingerprint": hashlib.sha256(manifests).hexdigest()[:16],
    }
    (killed / "interrupt.py").write_text(INTERRUPT)
    kill = "    - class_path: interrupt.KillAtStep\n      init_args: {step: 3}"
    died = _run(
        ["fit", "--config", str(DEMO), "--config", str(_overrides(killed, 6, kill))],
        demo_dir,
        extra_path=killed,
        check=False,
    )
    assert died.returncode == -9, died.stderr[-3000:]
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == [
        "epoch=0-step=2.ckpt",
        "last.ckpt",
    ]
    # as if killed between the two writes: --ckpt_path last must take the step checkpoint, not start
    # over
    (killed / "checkpoints" / "last.ckpt").unlink()
    _run(
        [
            "fit",
            "--config",
            str(DEMO),
            "--config",
            str(_overrides(killed, 6)),
            "--ckpt_path",
            "last",
        ],
        demo_dir,
    )
    expected, resumed = _losses(straight), _losses(killed)
    assert sorted(expected) == list(range(6)) and sorted(resumed) == list(range(6))
    second = [
        int(row["step"])
        for row in csv.DictReader((killed / "lightning_logs/version_1/metrics.csv").open())
        if row.get("train/loss")
    ]
    assert min(second) == 2, "the resumed run must start at the checkpoint's step"
    for step in range(6):
        assert resumed[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6), step


@pytest.fixture(scope="module")
def fsdp_runs(tmp_path_factory, demo_dir) -> tuple[dict[int, float], dict[int, float], Path]:
    """FSDP2 (ModelParallelStrategy, gloo) on 2 CPU processes.

    The runs: 4 steps straight; 2 steps, stop, resume to 4.
    """
    strategy = (
        '{"class_path": "lightning.pytorch.strategies.ModelParallelStrategy", '
        '"init_args": {"data_parallel_size": 2, "tensor_parallel_size": 1}}'
    )
    fsdp = ["--trainer.strategy", strategy, "--trainer.devices", "2"]
    straight, resumed = tmp_path_factory.mktemp("straight"), tmp_path_factory.mktemp("resumed")
    _run(["fit", "--config", str(DEMO), "--config", str(_overrides(straight, 4)), *fsdp], demo_dir)
    (resumed / "interrupt.py").write_text(INTERRUPT)
    stop = "    - class_path: interrupt.StopAtStep\n      init_args: {step: 2}"
    _run(
        ["fit", "--config", str(DEMO), "--config", str(_overrides(resumed, 4, stop)), *fsdp],
        demo_dir,
        extra_path=resumed,
    )
    last = resumed / "checkpoints" / "last.ckpt"
    assert {"__0_0.distcp", "__1_0.distcp", "meta.pt"} <= {p.name for p in last.iterdir()}, (
        "expected DCP shards"
    )
    _run(
        [
            "fit",
            "--config",
            str(DEMO),
            "--config",
            str(_overrides(resumed, 4)),
            *fsdp,
            "--ckpt_path",
            "last",
        ],
        demo_dir,
    )
    return _losses(straight), _losses(resumed), last


@pytest.mark.slow
def test_fsdp_on_two_cpu_processes_trains_saves_shards_and_resumes_to_the_same_losses(fsdp_runs):
    expected, got, _ = fsdp_runs
    assert sorted(expected) == [0, 1, 2, 3] and sorted(got) == [0, 1, 2, 3]
    for step in range(4):  # steps 2 and 3 run after restoring the sharded checkpoint
        assert got[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6), step


@pytest.mark.slow
def test_fsdp_refuses_an_unsharded_tensor_parallel_layout(tmp_path, demo_dir):
    """Lightning's default ``data_parallel_size: auto`` on one node makes 2 tensor-parallel ranks
    with no gradient sync between them; the module must say so instead of training two diverging
    copies."""
    strategy = '{"class_path": "lightning.pytorch.strategies.ModelParallelStrategy"}'
    result = _run(
        [
            "fit",
            "--config",
            str(DEMO),
            "--config",
            str(_overrides(tmp_path, 1)),
            "--trainer.strategy",
            strategy,
            "--trainer.devices",
            "2",
        ],
        demo_dir,
        check=False,
    )
    assert result.returncode != 0
    assert "tensor_parallel_size: 1" in result.stderr


BAD_LINES = {
    "malformed": ('{"audio": "x.wav", "task": "asr", ', r"bad\.jsonl:3: .*JSON"),
    "missing audio": (
        '{"audio": "/nowhere/gone.wav", "task": "asr", "text": "one", "audio_language": "en", '
        '"text_language": "en"}',
        r"bad\.jsonl:3: audio: file not found: /nowhere/gone\.wav",
    ),
    "unknown task": (
        '{"audio": "AUDIO", "task": "dance", "text": "one", "audio_language": "en", "text_language": "en"}',
        r"bad\.jsonl:3: task: .*'dance'",
    ),
}


@pytest.mark.slow
def test_bad_manifest_lines_stop_the_run_naming_them_and_keep_the_checkpoint(tmp_path, demo_dir):
    import json
    import re

    _run(["fit", "--config", str(DEMO), "--config", str(_overrides(tmp_path, 2))], demo_dir)
    last = tmp_path / "checkpoints" / "last.ckpt"
    saved = last.read_bytes()
    train = next(demo_dir.glob("demo-*-size2")) / "train.jsonl"
    lines = [json.loads(line) for line in train.read_text().splitlines()]
    for line in lines:
        line["audio"] = str(train.parent / line["audio"])
    for case, (bad, pattern) in BAD_LINES.items():
        manifest = tmp_path / "bad.jsonl"
        good = [json.dumps(line) for line in lines]
        manifest.write_text(
            "\n".join([*good[:2], bad.replace("AUDIO", lines[0]["audio"]), *good[2:]]) + "\n"
        )
        result = _run(
            [
                "fit",
                "--config",
                str(DEMO),
                "--config",
                str(_overrides(tmp_path, 4)),
                "--data.train",
                f"[{manifest}]",
                "--ckpt_path",
                "last",
            ],
            demo_dir,
            check=False,
        )
        assert result.returncode != 0, case
        assert re.search(pattern, result.stderr), (case, result.stderr[-2000:])
        assert last.read_bytes() == saved, case


def test_transcription_report_keeps_a_random_models_output_in_one_table_row():
    """A random model emits newlines and pipes.

    Each report row must stay one line of exactly three cells.
    """
    row = f"| en | one two | {_cell('a|b' + chr(10) + 'c' + chr(92))} |"
    assert chr(10) not in row
    assert len(re.findall(r"(?<!\\)\|", row)) == 4  # the row's own separators only
    assert _cell("a|b" + chr(10) + "c" + chr(92)) == r"a\|b\nc\\"
