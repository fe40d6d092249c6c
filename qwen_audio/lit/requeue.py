"""SLURM preemption and time limits: the ranks save together, then the job is requeued.

The ranks save at a batch boundary.

``sbatch --signal=SIGUSR1@90`` (or ``scancel --signal=USR1 JOBID``) warns every task of the job
before SLURM stops it. Lightning's own handler (``SLURMEnvironment(auto_requeue=True)``) saves the
checkpoint inside the signal handler. Python runs that handler between any two bytecodes, so it can
run in the middle of a backward pass or an FSDP collective. A save there is either inconsistent or,
being a collective itself, hangs (Lightning issue #21406).

:class:`RequeueOnSignal` takes the signal over, and its handler only records it. At the end of the
next training batch the ranks agree whether any of them got it. If so, all of them save Lightning's
``hpc_ckpt_N.ckpt`` in ``default_root_dir`` (sharded under FSDP2). At the next hook, once the loop
has logged that batch, rank 0 flushes the loggers and runs ``scontrol requeue``. Every rank ends fit
with :class:`Requeued`. The requeued job resumes from that checkpoint with ``--ckpt_path last``
(:func:`qwen_audio.lit.resume.newest_checkpoint`).

Progress is never lost quietly. Rank 0 appends each save and each resume to ``requeue.jsonl`` in
``default_root_dir`` (job id, restart count, checkpoint, step). A requeued job may restore less than
its job saved (no ``--ckpt_path``, or an older checkpoint). It then stops with a
:class:`~qwen_audio.checkpoint.CheckpointError` before its first step instead of training from the
start. Once the checkpoint is saved, the SIGTERM with which SLURM ends the job is only recorded.
Lightning's own SIGTERM handler runs a collective inside the handler, which can hang the ranks in
the middle of the requeue.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_info

from qwen_audio.checkpoint import CheckpointError

RECORD = "requeue.jsonl"  # in default_root_dir: one JSON line per requeue save and per resume


class Requeued(SystemExit):
    """Ends fit on every rank after the requeue checkpoint.

    It is not ``trainer.should_stop``, because that would end the epoch. A ModelCheckpoint saving at
    the epoch's end would then record the interrupted epoch as finished, newer than the save.
    """


def slurm_job_id() -> str:
    """The id ``scontrol`` knows this job by (``ARRAYJOB_TASK`` for an array task)."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    return (
        f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        if array_job
        else os.environ["SLURM_JOB_ID"]
    )


def read_record(root: str) -> list[dict]:
    """The lines of ``root``'s :data:`RECORD`, oldest first (none when there is no file)."""
    path = os.path.join(root, RECORD)
    if not os.path.isfile(path):
        return []
    with open(path) as file:
        return [json.loads(line) for line in file if line.strip()]


def _append_record(root: str, **event) -> None:
    event = {
        "job": slurm_job_id(),
        "restart": int(os.environ.get("SLURM_RESTART_COUNT", 0)),
        **event,
    }
    with open(os.path.join(root, RECORD), "a") as file:
        file.write(json.dumps(event) + "\n")
        file.flush()
        os.fsync(file.fileno())


class RequeueOnSignal(L.Callback):
    """Replaces Lightning's requeue-signal handler on SLURM with auto-requeue.

    Auto-requeue is Lightning's default there.

    It does nothing elsewhere. The signal is the environment's ``requeue_signal`` (SIGUSR1 unless
    configured).
    """

    def __init__(self) -> None:
        self.signalled = False
        self.saved: str | None = None
        self._signum: int | None = None
        self._previous_handler = None

    def _record(self, signum, frame) -> None:
        self.signalled = True

    @staticmethod
    def _ending(signum, frame) -> None:
        rank_zero_info("SIGTERM after the requeue save: ending with the requeue")

    def setup(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        # before Lightning registers its handlers at the start of fit: it leaves a signal that has a
        # handler alone. The environment Lightning's own handler would follow (one-device strategies
        # keep none of their own).
        environment = trainer._accelerator_connector.cluster_environment
        if (
            stage != "fit"
            or not isinstance(environment, SLURMEnvironment)
            or not environment.auto_requeue
        ):
            return
        self.signalled, self.saved = False, None
        self._signum = environment.requeue_signal
        self._previous_handler = signal.signal(self._signum, self._record)

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if self._signum is None or not trainer.strategy.reduce_boolean_decision(
            self.signalled, all=False
        ):
            return
        path = trainer.strategy.broadcast(
            trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir)
        )
        trainer.save_checkpoint(path)  # on every rank: a collective under FSDP
        if trainer.is_global_zero:
            _append_record(trainer.default_root_dir, saved=path, step=trainer.global_step)
        rank_zero_info(f"requeue signal: saved {path} at step {trainer.global_step}")
        self.saved = path
        signal.signal(
            signal.SIGTERM, self._ending
        )  # Lightning's teardown puts back the handler it found
        trainer.strategy.barrier(
            "requeue-saved"
        )  # every rank past this before rank 0 asks for the requeue

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        """In a requeued job, record the resume, or stop if the restored step is too early.

        The restored step must be at least the one this job saved before its requeue.
        """
        if self._signum is None:
            return
        job, root = slurm_job_id(), trainer.default_root_dir
        saves = [event for event in read_record(root) if event["job"] == job and "saved" in event]
        if saves and trainer.global_step < saves[-1]["step"]:
            raise CheckpointError(
                f"requeued SLURM job {job} restored step {trainer.global_step} (ckpt_path {trainer.ckpt_path}), "
                f"but it saved {saves[-1]['saved']} at step {saves[-1]['step']} before its requeue: it would "
                f"start over. Resume with --ckpt_path last, or remove {os.path.join(root, RECORD)} to start over"
            )
        if saves and trainer.is_global_zero:
            _append_record(root, resumed=trainer.ckpt_path, step=trainer.global_step)

    def _requeue(self, trainer: L.Trainer) -> None:
        if self.saved is None:
            return
        job = slurm_job_id()
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.save()  # SLURM stops the job soon after the requeue
            result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
            problem = (
                None
                if result.returncode == 0
                else result.stderr.strip() or f"exit status {result.returncode}"
            )
        else:
            problem = None
        problem = trainer.strategy.broadcast(problem)
        if problem is not None:
            raise Requeued(
                f"scontrol requeue failed ({problem}); resume from {self.saved} with --ckpt_path last"
            )
        rank_zero_info(f"requeued SLURM job {job}; it resumes from {self.saved}")
        raise Requeued(0)

    # the hooks that can follow the batch's logging: the next batch, validation, the end of the
    # epoch (before the ModelCheckpoint's own epoch-end hook, which runs after the other callbacks')
    def on_train_batch_start(self, trainer: L.Trainer, *args) -> None:
        self._requeue(trainer)

    def on_validation_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._requeue(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._requeue(trainer)

    def teardown(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        if self._signum is not None:
            signal.signal(self._signum, self._previous_handler or signal.SIG_DFL)
            self._signum = None

    def on_exception(
        self, trainer: L.Trainer, module: L.LightningModule, exception: BaseException
    ) -> None:
        # after an exception no teardown hook runs, and Lightning's signal teardown, which runs
        # after this hook, puts back the handlers it found when fit started (this one among them):
        # have it put back the one before
        if self._signum is not None:
            trainer._signal_connector._original_handlers[self._signum] = (
                self._previous_handler or signal.SIG_DFL
            )
            self._signum = None
