"""Which Lightning checkpoint a run resumes from, and the refusal of one that cannot be resumed.

Lightning's ``ckpt_path="last"`` takes ``last.ckpt`` of the current logger version's folder. A kill
between the write of a step checkpoint and of ``last.ckpt`` leaves ``last.ckpt`` one interval
behind. A resumed run whose logger starts a new ``version_N`` finds no ``last.ckpt`` at all and
silently starts over.

:func:`newest_checkpoint` instead takes the newest complete checkpoint, whichever was written last.
It considers those any :class:`~lightning.pytorch.callbacks.ModelCheckpoint` of the trainer wrote.
It also considers those a SLURM requeue saved (Lightning's ``hpc_ckpt_N.ckpt`` in
``default_root_dir``, :class:`~qwen_audio.lit.requeue.RequeueOnSignal`).
"""

from __future__ import annotations

import glob
import os
import zipfile

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from qwen_audio.checkpoint import CheckpointError

SHARDED_MARKERS = (
    "meta.pt",
    ".metadata",
)  # Lightning's and torch.distributed.checkpoint's, each written last
HPC_CHECKPOINTS = (
    "hpc_ckpt_*.ckpt"  # Lightning's name for the checkpoint saved before a SLURM requeue
)


def is_complete(path: str) -> bool:
    """A checkpoint file whose zip directory (written last by ``torch.save``) is there, or a sharded
    checkpoint folder holding both metadata files."""
    if os.path.isdir(path):
        return all(os.path.isfile(os.path.join(path, marker)) for marker in SHARDED_MARKERS)
    return zipfile.is_zipfile(path)


def checkpoint_folders(trainer: L.Trainer) -> list[str]:
    """Where the trainer's ModelCheckpoints write.

    That is their ``dirpath``, or without one the ``checkpoints`` folder of every logger version.
    That folder is Lightning's default place, which changes with each run's new version.
    """
    folders = []
    for callback in trainer.checkpoint_callbacks:
        if not isinstance(callback, ModelCheckpoint):
            continue
        if callback.dirpath is not None:
            folders.append(os.fspath(callback.dirpath))
        elif trainer.loggers:
            logger = trainer.loggers[0]
            root = os.path.join(logger.save_dir or trainer.default_root_dir, str(logger.name))
            folders.extend(sorted(glob.glob(os.path.join(glob.escape(root), "*", "checkpoints"))))
        else:
            folders.append(os.path.join(trainer.default_root_dir, "checkpoints"))
    return folders


def newest_checkpoint(trainer: L.Trainer) -> str | None:
    """The most recently written complete ``*.ckpt`` in :func:`checkpoint_folders` or
    ``hpc_ckpt_N.ckpt`` in ``default_root_dir``, or None when there is none."""
    patterns = [
        os.path.join(glob.escape(folder), "*" + ModelCheckpoint.FILE_EXTENSION)
        for folder in checkpoint_folders(trainer)
    ]
    patterns.append(os.path.join(glob.escape(os.fspath(trainer.default_root_dir)), HPC_CHECKPOINTS))
    candidates = {path for pattern in patterns for path in glob.glob(pattern) if is_complete(path)}
    written = {
        path: os.path.getmtime(
            os.path.join(path, SHARDED_MARKERS[0]) if os.path.isdir(path) else path
        )
        for path in candidates
    }
    return max(written, key=written.get) if written else None


def check_resumable(path: str, preset: str | None = None) -> None:
    """Raise :class:`CheckpointError` unless ``path`` is a complete Lightning checkpoint of a
    :class:`~qwen_audio.lit.QwenAudioModule`, built from ``preset`` when one is given.

    Tensors are memory-mapped, not read.
    """
    named = f" (preset {preset!r})" if preset else ""
    expected = (
        f"expected a Lightning checkpoint of QwenAudioModule{named} written by ModelCheckpoint"
    )
    if not os.path.exists(path):
        raise CheckpointError(f"--ckpt_path {path}: not found; {expected}")
    if not is_complete(path):
        raise CheckpointError(
            f"--ckpt_path {path}: truncated or not a checkpoint (no zip directory, or a sharded "
            f"folder without {' and '.join(SHARDED_MARKERS)}); {expected}"
        )
    if os.path.isdir(path):
        return  # sharded: the metadata names no preset; torch.distributed.checkpoint checks every shard's shape
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch raises several unrelated types for a bad file
        raise CheckpointError(f"--ckpt_path {path}: cannot read it ({err}); {expected}") from err
    if not isinstance(checkpoint, dict) or not {"state_dict", "pytorch-lightning_version"} <= set(
        checkpoint
    ):
        keys = sorted(checkpoint)[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(
            f"--ckpt_path {path}: holds {keys}, no 'state_dict' and 'pytorch-lightning_version'; "
            f"{expected}"
        )
    hyper_parameters = checkpoint.get("hyper_parameters", {})
    trained = hyper_parameters.get("preset")
    if trained is None:
        renamed = " ('model' is this setting's former name)" if "model" in hyper_parameters else ""
        raise CheckpointError(
            f"--ckpt_path {path}: its hyper_parameters name no preset, they hold "
            f"{sorted(hyper_parameters)[:8]}{renamed}; {expected}"
        )
    if preset is not None and trained != preset:
        raise CheckpointError(
            f"--ckpt_path {path}: was trained with preset {trained!r}; {expected}"
        )
