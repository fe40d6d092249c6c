"""Which checkpoint ``--ckpt_path last`` resumes from.

Also the refusal of one that cannot be resumed.
"""

from __future__ import annotations

import os

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from qwen_audio.checkpoint import CheckpointError
from qwen_audio.lit.resume import check_resumable, newest_checkpoint


def _checkpoint(path, step: int, mtime: float, preset: str = "tiny") -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(
        {
            "state_dict": {},
            "pytorch-lightning_version": L.__version__,
            "global_step": step,
            "hyper_parameters": {"preset": preset},
        },
        path,
    )
    os.utime(path, (mtime, mtime))


def test_last_is_the_newest_complete_checkpoint_not_a_stale_last_ckpt(tmp_path):
    """A kill between two writes leaves last.ckpt one interval behind.

    The two writes are the step checkpoint's and last.ckpt's.
    """
    _checkpoint(tmp_path / "last.ckpt", 50, 1000)
    _checkpoint(tmp_path / "epoch=0-step=100.ckpt", 100, 2000)
    trainer = L.Trainer(callbacks=[ModelCheckpoint(dirpath=tmp_path)], logger=False)
    assert newest_checkpoint(trainer) == str(tmp_path / "epoch=0-step=100.ckpt")
    saved = (
        tmp_path / "epoch=0-step=100.ckpt"
    ).read_bytes()  # a newer file cut short (killed while copied in)
    (tmp_path / "epoch=0-step=150.ckpt").write_bytes(saved[: len(saved) // 2])
    assert newest_checkpoint(trainer) == str(tmp_path / "epoch=0-step=100.ckpt")


def test_last_finds_the_checkpoints_of_an_earlier_logger_version(tmp_path):
    """Without a dirpath, checkpoints go to the logger's version_N folder.

    A resumed run gets version_N+1.
    """
    _checkpoint(tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt", 4, 1000)
    _checkpoint(tmp_path / "lightning_logs" / "version_1" / "checkpoints" / "last.ckpt", 8, 2000)
    trainer = L.Trainer(
        callbacks=[ModelCheckpoint()], logger=CSVLogger(tmp_path), default_root_dir=tmp_path
    )
    assert trainer.logger.version == 2
    assert newest_checkpoint(trainer) == str(
        tmp_path / "lightning_logs" / "version_1" / "checkpoints" / "last.ckpt"
    )
    assert (
        newest_checkpoint(
            L.Trainer(callbacks=[ModelCheckpoint(dirpath=tmp_path / "none")], logger=False)
        )
        is None
    )


def test_last_takes_the_requeue_checkpoint_when_it_is_the_newest(tmp_path):
    """A SLURM requeue saves Lightning's hpc_ckpt_N.ckpt in default_root_dir.

    See qwen_audio.lit.RequeueOnSignal.
    """
    _checkpoint(tmp_path / "hpc_ckpt_1.ckpt", 5, 1000)  # an earlier requeue
    _checkpoint(tmp_path / "checkpoints" / "last.ckpt", 8, 2000)
    trainer = L.Trainer(
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "checkpoints")],
        logger=False,
        default_root_dir=tmp_path,
    )
    assert newest_checkpoint(trainer) == str(tmp_path / "checkpoints" / "last.ckpt")
    _checkpoint(tmp_path / "hpc_ckpt_2.ckpt", 11, 3000)
    assert newest_checkpoint(trainer) == str(tmp_path / "hpc_ckpt_2.ckpt")
    (tmp_path / "hpc_ckpt_3.ckpt").write_bytes(
        (tmp_path / "hpc_ckpt_2.ckpt").read_bytes()[:100]
    )  # killed mid-write
    assert newest_checkpoint(trainer) == str(tmp_path / "hpc_ckpt_2.ckpt")


def test_sharded_checkpoint_folders_count_once_complete(tmp_path):
    _checkpoint(tmp_path / "epoch=0-step=2.ckpt", 2, 1000)
    sharded = tmp_path / "last.ckpt"
    sharded.mkdir()
    (sharded / "__0_0.distcp").write_bytes(b"x")
    trainer = L.Trainer(callbacks=[ModelCheckpoint(dirpath=tmp_path)], logger=False)
    assert newest_checkpoint(trainer) == str(tmp_path / "epoch=0-step=2.ckpt")  # killed mid-write
    (sharded / ".metadata").write_bytes(b"x")
    (sharded / "meta.pt").write_bytes(b"x")
    assert newest_checkpoint(trainer) == str(sharded)


def test_a_truncated_foreign_or_other_preset_checkpoint_is_named(tmp_path):
    good = tmp_path / "good.ckpt"
    _checkpoint(good, 2, 1000)
    check_resumable(str(good), "tiny")
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(
        CheckpointError,
        match=r"--ckpt_path .*cut\.ckpt: truncated or not a checkpoint.*expected a "
        r"Lightning checkpoint of QwenAudioModule",
    ):
        check_resumable(str(cut))
    foreign = tmp_path / "whisper.pt"
    torch.save({"dims": {}, "model_state_dict": {}}, foreign)
    with pytest.raises(
        CheckpointError, match=r"whisper\.pt: holds \['dims', 'model_state_dict'\], no 'state_dict'"
    ):
        check_resumable(str(foreign))
    with pytest.raises(
        CheckpointError, match=r"good\.ckpt: was trained with preset 'tiny'; .*\(preset 'demo'\)"
    ):
        check_resumable(str(good), "demo")
    unnamed = tmp_path / "unnamed.ckpt"
    torch.save(
        {
            "state_dict": {},
            "pytorch-lightning_version": L.__version__,
            "hyper_parameters": {"model": "tiny", "lr": 1e-3},
        },
        unnamed,
    )
    with pytest.raises(
        CheckpointError,
        match=r"unnamed\.ckpt: its hyper_parameters name no preset, they hold \['lr', 'model'\] "
        r"\('model' is this setting's former name\)",
    ):
        check_resumable(str(unnamed))
    with pytest.raises(CheckpointError, match="not found"):
        check_resumable(str(tmp_path / "gone.ckpt"))
