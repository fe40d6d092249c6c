"""The SLURM path end to end on a real cluster: ``recipes/slurm/pretrain.sbatch`` submitted with the
CPU overrides that ``recipes/slurm/README.md`` shows (2 tasks on 1 node, FSDP2 over gloo,
``demo_fsdp_cpu.yaml``), Lightning's SLURMEnvironment, preemption by the requeue signal and the
requeued run.

``recipes/slurm/local_cluster.sh`` brings a one-node cluster up on this machine. Marked ``slurm``:
they run only with ``pytest -m slurm`` (``tests/conftest.py`` deselects them otherwise), and skip
without ``sbatch`` on PATH.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint import FileSystemReader

from qwen_audio.config import QwenAudioConfig
from qwen_audio.lit.requeue import read_record
from qwen_audio.model import QwenAudio

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(shutil.which("sbatch") is None, reason="needs SLURM's sbatch"),
]

REPO = Path(__file__).resolve().parents[1]
README = REPO / "recipes" / "slurm" / "README.md"
CONFIG = "recipes/configs/pretrain/demo_fsdp_cpu.yaml"
STEPS = 16  # demo_fsdp_cpu.yaml's max_steps
SHARDS = {
    "__0_0.distcp",
    "__1_0.distcp",
    ".metadata",
    "meta.pt",
}  # one file per rank, then DCP's and Lightning's
JOB_TIMEOUT = 420  # seconds; a job takes under a minute on 2 cores
FINAL_STATES = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
}


def readme_sbatch_line() -> list[str]:
    """``sbatch OPTIONS recipes/slurm/pretrain.sbatch`` from the README's CPU line.

    That line reads ``CONFIG=... sbatch ...``.
    """
    line = next(
        line
        for line in README.read_text().splitlines()
        if line.startswith(f"CONFIG={CONFIG} sbatch ")
    )
    words = shlex.split(line)[1:]
    assert words[-1] == "recipes/slurm/pretrain.sbatch", line
    return words


class Cluster:
    """Submits the README's job into a run folder of its own and waits for it.

    It cancels what is left at the end.
    """

    def __init__(self, demo_dir: Path):
        self.demo_dir, self.jobs = demo_dir, []

    def submit(self, root: Path, config: str = CONFIG) -> str:
        sbatch, *options = readme_sbatch_line()
        env = {
            **os.environ,
            "CONFIG": config,
            "PYTHONPATH": str(REPO),
            "OMP_NUM_THREADS": "1",
            "QWEN_AUDIO_DEMO_DIR": str(self.demo_dir),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        }
        command = [
            sbatch,
            "--parsable",
            f"--output={root}/slurm-%j.out",
            *options,
            "--trainer.default_root_dir",
            str(root),
            "--trainer.logger.init_args.save_dir",
            str(root),
        ]
        job = subprocess.run(
            command, cwd=REPO, env=env, capture_output=True, text=True, check=True
        ).stdout.strip()
        self.jobs.append(job)
        return job

    @staticmethod
    def show(job: str) -> dict[str, str]:
        """The job's ``scontrol show job`` fields. A failed query (slurmctld busy on a loaded
        machine) is asked again, never read as "the job is gone": that once ended a wait between the
        requeue and the resume."""
        for _ in range(30):
            shown = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True)
            if shown.returncode == 0 and "JobState=" in shown.stdout:
                return dict(re.findall(r"(\w+)=(\S*)", shown.stdout))
            time.sleep(1)
        raise AssertionError(f"scontrol show job {job} failed 30 times: {shown.stderr}")

    def finished(self, job: str) -> bool:
        return self.show(job)["JobState"] in FINAL_STATES

    def wait(self, job: str, root: Path) -> dict[str, str]:
        """The job's ``scontrol show job`` fields once it has reached a final state (requeues
        included: a requeued job goes back to PENDING)."""
        deadline = time.monotonic() + JOB_TIMEOUT
        while not self.finished(job):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"job {job} not finished after {JOB_TIMEOUT} s:\n{log(root, job)[-3000:]}"
                )
            time.sleep(1)
        return self.show(job)

    def cancel_all(self) -> None:
        for job in self.jobs:
            subprocess.run(["scancel", job], capture_output=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = Cluster(tmp_path_factory.mktemp("demo-corpus"))
    yield cluster
    cluster.cancel_all()


def log(root: Path, job: str) -> str:
    path = root / f"slurm-{job}.out"
    return path.read_text() if path.exists() else ""


def losses(root: Path, version: int | None = None) -> dict[int, float]:
    """``train/loss`` by step, of one CSV log version or of all of them.

    A requeued run writes a new one.
    """
    pattern = f"lightning_logs/version_{'*' if version is None else version}/metrics.csv"
    found = {}
    for path in sorted(root.glob(pattern)):
        found.update(
            {
                int(row["step"]): float(row["train/loss"])
                for row in csv.DictReader(path.open())
                if row["train/loss"]
            }
        )
    return found


def saved_step(checkpoint: Path) -> int:
    return torch.load(checkpoint / "meta.pt", weights_only=False)["global_step"]


@pytest.fixture(scope="module")
def straight(cluster, tmp_path_factory) -> tuple[Path, str, dict[str, str]]:
    root = tmp_path_factory.mktemp("straight")
    job = cluster.submit(root)
    return root, job, cluster.wait(job, root)


def test_both_ranks_train_one_data_parallel_model_and_write_a_dcp_checkpoint(straight):
    root, job, shown = straight
    printed = log(root, job)
    assert (shown["JobState"], shown["Restarts"], shown["ExitCode"]) == ("COMPLETED", "0", "0:0"), (
        printed[-3000:]
    )
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in printed and "GLOBAL_RANK: 1, MEMBER: 2/2" in printed
    assert "distributed_backend=gloo" in printed and "Starting with 2 processes" in printed
    trained = losses(root)
    assert sorted(trained) == list(range(STEPS)) and all(math.isfinite(v) for v in trained.values())

    last = root / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    assert SHARDS <= {p.name for p in last.iterdir()} and saved_step(last) == STEPS
    # One model sharded over both ranks, not two copies: every weight of the tiny model is in the
    # checkpoint at its full shape, its rows split between rank 0's file and rank 1's (FSDP2 shards
    # dim 0).
    metadata = FileSystemReader(str(last)).read_metadata()
    with torch.device("meta"):
        reference = dict(QwenAudio(QwenAudioConfig.from_name("tiny")).named_parameters())
    files: dict[str, set[str]] = {}
    for index, storage in metadata.storage_data.items():
        files.setdefault(index.fqn, set()).add(storage.relative_path)
    for name, parameter in reference.items():
        saved = metadata.state_dict_metadata[f"state_dict.model.{name}"]
        assert saved.size == parameter.shape, name
        rows = sorted(
            (chunk.offsets[0], chunk.offsets[0] + chunk.sizes[0])
            for chunk in saved.chunks
            if chunk.sizes[0]
        )
        if parameter.shape[0] >= 2:
            assert rows == [
                (0, parameter.shape[0] // 2),
                (parameter.shape[0] // 2, parameter.shape[0]),
            ], (name, rows)
            assert files[f"state_dict.model.{name}"] == {"__0_0.distcp", "__1_0.distcp"}, name


def test_preempted_job_saves_requeues_and_resumes_to_the_uninterrupted_losses(
    cluster, straight, tmp_path
):
    """What the runs wrote to disk, not what they printed: the requeue checkpoint and its step, the
    record of the save and of the resume (:data:`qwen_audio.lit.requeue.RECORD`), and the steps and
    losses each run logged."""
    root = tmp_path / "preempted"
    root.mkdir()
    job = cluster.submit(root)
    deadline = time.monotonic() + JOB_TIMEOUT
    while len(losses(root, version=0)) < 3:  # it trains
        assert time.monotonic() < deadline and not cluster.finished(job), log(root, job)[-3000:]
        time.sleep(0.5)
    subprocess.run(["scancel", "--signal=USR1", job], check=True)
    shown = cluster.wait(job, root)
    printed = log(root, job)
    assert (shown["JobState"], shown["Restarts"]) == ("COMPLETED", "1"), printed[-3000:]

    hpc = root / "hpc_ckpt_1.ckpt"
    step = saved_step(hpc)
    assert SHARDS <= {p.name for p in hpc.iterdir()} and 3 <= step < STEPS
    saved, resumed = read_record(str(root))  # no other line: one save, one resume
    assert saved == {"job": job, "restart": 0, "saved": str(hpc), "step": step}, printed[-3000:]
    # the resume restored the saved step (from hpc_ckpt_1, or from a ModelCheckpoint written at the
    # same step)
    assert (resumed["job"], resumed["restart"], resumed["step"]) == (job, 1, step), resumed
    assert saved_step(Path(resumed["resumed"])) == step
    assert (
        "Handling auto-requeue signal" not in printed
    )  # Lightning's handler, which saves inside the signal handler
    assert sorted(losses(root, version=0)) == list(range(step))
    assert sorted(losses(root, version=1)) == list(
        range(step, STEPS)
    )  # its first logged step is the saved one

    expected, got = losses(straight[0]), losses(root)
    print(
        f"\nstep | uninterrupted | preempted at step {step}, requeued",
        *(f"{s} | {expected[s]:.7f} | {got[s]:.7f}" for s in range(STEPS)),
        sep="\n",
    )
    for s in range(STEPS):
        assert got[s] == pytest.approx(expected[s], rel=1e-5), s


def test_a_job_with_a_config_error_fails_with_it_and_leaves_no_checkpoint(cluster, tmp_path):
    root = tmp_path / "broken"
    root.mkdir()
    manifest = root / "bad.jsonl"
    manifest.write_text(
        json.dumps(
            {
                "audio": "/nowhere/gone.wav",
                "task": "asr",
                "text": "one",
                "audio_language": "en",
                "text_language": "en",
            }
        )
        + "\n"
    )
    config = root / "broken.yaml"
    config.write_text(
        (REPO / CONFIG).read_text().replace("train: [demo:train]", f"train: [{manifest}]")
    )
    job = cluster.submit(root, str(config))
    shown = cluster.wait(job, root)
    printed = log(root, job)
    assert (shown["JobState"], shown["Restarts"], shown["ExitCode"]) == ("FAILED", "0", "1:0"), (
        printed[-3000:]
    )
    assert printed.count(f"error: {manifest}:1: audio: file not found: /nowhere/gone.wav") == 2, (
        printed[-3000:]
    )
    assert not [
        str(p) for p in root.rglob("*.ckpt")
    ]  # nothing that --ckpt_path last would resume from
