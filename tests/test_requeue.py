"""RequeueOnSignal in one process, without a cluster: SLURM's environment variables, a recording
``scontrol`` on PATH, and a real SIGUSR1 in the middle of an epoch. ``tests/test_slurm.py`` runs the
same on a real cluster."""

from __future__ import annotations

import os
import signal
import stat

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from qwen_audio.checkpoint import CheckpointError
from qwen_audio.lit import RequeueOnSignal
from qwen_audio.lit.requeue import Requeued, read_record
from qwen_audio.lit.resume import newest_checkpoint

STEPS_PER_EPOCH = 6


class Line(L.LightningModule):
    """Fits a line; records the loss of every step. Every batch is the same line, so the losses
    follow from the weights and optimizer state alone (the data modules' own resume is
    tests/test_resume.py's)."""

    def __init__(self, record: dict[int, float]):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(2))
        self.record = record

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = ((self.weight[0] * x + self.weight[1] - y) ** 2).mean()
        self.record[self.global_step] = loss.item()
        return loss

    def train_dataloader(self):
        x = torch.linspace(-1, 1, 8).expand(STEPS_PER_EPOCH, 8)
        return torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(x, 3 * x + 1), batch_size=1
        )

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class SignalAt(L.Callback):
    """Sends the requeue signal to this process at the end of one step.

    It sends it as ``scancel --signal=USR1`` does.
    """

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            assert signal.getsignal(signal.SIGUSR1) not in (
                signal.SIG_DFL,
                None,
            )  # else the signal ends pytest
            os.kill(os.getpid(), signal.SIGUSR1)


@pytest.fixture
def slurm(tmp_path, monkeypatch) -> str:
    """A one-task SLURM job's environment.

    Returns the file the fake ``scontrol`` writes its arguments to.
    """
    for name, value in {
        "SLURM_NTASKS": "1",
        "SLURM_JOB_NAME": "test",
        "SLURM_JOB_ID": "4242",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_NODELIST": "localhost",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    bin_dir, calls = tmp_path / "bin", tmp_path / "scontrol-calls"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return str(calls)


def fit(root, record, callbacks, ckpt_path=None):
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        callbacks=[ModelCheckpoint(dirpath=root / "checkpoints", save_last=True), *callbacks],
    )
    trainer.fit(Line(record), ckpt_path=ckpt_path)
    return trainer


def test_the_signal_saves_at_a_batch_boundary_requeues_and_the_requeued_run_continues_exactly(
    tmp_path, slurm, monkeypatch
):
    straight: dict[int, float] = {}
    fit(tmp_path / "straight", straight, [])
    before = signal.getsignal(signal.SIGUSR1)

    root, first = tmp_path / "preempted", {}
    with pytest.raises(Requeued) as stopped:
        fit(root, first, [SignalAt(3), RequeueOnSignal()])
    assert stopped.value.code == 0
    assert open(slurm).read() == "requeue 4242\n"
    assert signal.getsignal(signal.SIGUSR1) == before  # restored
    assert sorted(first) == [0, 1, 2]  # stopped right after the step the signal came in
    hpc = root / "hpc_ckpt_1.ckpt"
    assert torch.load(hpc, weights_only=False)["global_step"] == 3
    # mid-epoch: no epoch-end checkpoint that would record the interrupted epoch as finished
    assert not (root / "checkpoints").exists()

    assert read_record(str(root)) == [{"job": "4242", "restart": 0, "saved": str(hpc), "step": 3}]

    # the requeued job (SLURM_RESTART_COUNT 1) that does not find its checkpoint stops before its
    # first step
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    hpc.rename(root / "elsewhere")
    fresh: dict[int, float] = {}
    with pytest.raises(
        CheckpointError, match=rf"restored step 0 \(ckpt_path None\), but it saved {hpc} at step 3"
    ):
        fit(root, fresh, [RequeueOnSignal()])
    assert fresh == {}
    (root / "elsewhere").rename(hpc)

    resumed: dict[int, float] = {}
    probe = L.Trainer(
        default_root_dir=root,
        callbacks=[ModelCheckpoint(dirpath=root / "checkpoints")],
        logger=False,
    )
    assert newest_checkpoint(probe) == str(hpc)
    fit(root, resumed, [RequeueOnSignal()], ckpt_path=str(hpc))
    assert sorted(resumed) == list(range(3, 2 * STEPS_PER_EPOCH))
    assert read_record(str(root))[-1] == {
        "job": "4242",
        "restart": 1,
        "resumed": str(hpc),
        "step": 3,
    }
    for step, loss in {**first, **resumed}.items():
        assert loss == pytest.approx(straight[step], rel=1e-6), step


def test_off_slurm_the_signal_is_left_alone(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    before = signal.getsignal(signal.SIGUSR1)
    seen = []

    class Probe(L.Callback):
        def on_train_start(self, trainer, module):
            seen.append(signal.getsignal(signal.SIGUSR1))

    fit(tmp_path, {}, [RequeueOnSignal(), Probe()])
    assert seen == [before]
