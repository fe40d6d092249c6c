"""SLURM preemption and time limits: the ranks save together at a batch boundary, then the job is requeued.

``sbatch --signal=SIGUSR1@90`` (or ``scancel --signal=USR1 JOBID``) warns every task of the job before SLURM stops it.
Lightning's own handler (``SLURMEnvironment(auto_requeue=True)``) saves the checkpoint inside the signal handler,
which Python runs between any two bytecodes: in the middle of a backward pass or an FSDP collective, where a save is
either inconsistent or, being a collective itself, hangs (Lightning issue #21406). :class:`RequeueOnSignal` takes the
signal over: its handler only records it. At the end of the next training batch the ranks agree whether any of them
got it; if so, all of them save Lightning's ``hpc_ckpt_N.ckpt`` in ``default_root_dir`` (sharded under FSDP2). At the
next hook, once the loop has logged that batch, rank 0 flushes the loggers and runs ``scontrol requeue``, and every
rank ends fit with :class:`Requeued`. The requeued job resumes from that checkpoint with ``--ckpt_path last``
(:func:`qwen_audio.lit.resume.newest_checkpoint`).
"""

from __future__ import annotations

import os
import signal
import subprocess

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_info


class Requeued(SystemExit):
    """Ends fit on every rank after the requeue checkpoint. Not ``trainer.should_stop``: that would end the epoch, and
    a ModelCheckpoint saving at the epoch's end would record the interrupted epoch as finished, newer than the save."""


def slurm_job_id() -> str:
    """The id ``scontrol`` knows this job by (``ARRAYJOB_TASK`` for an array task)."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ["SLURM_JOB_ID"]


class RequeueOnSignal(L.Callback):
    """On SLURM with auto-requeue (Lightning's default there), replaces Lightning's requeue-signal handler; does
    nothing elsewhere. The signal is the environment's ``requeue_signal`` (SIGUSR1 unless configured)."""

    def __init__(self) -> None:
        self.signalled = False
        self.saved: str | None = None
        self._signum: int | None = None
        self._previous_handler = None

    def _record(self, signum, frame) -> None:
        self.signalled = True

    def setup(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        # before Lightning registers its handlers at the start of fit: it leaves a signal that has a handler alone.
        # The environment Lightning's own handler would follow (one-device strategies keep none of their own).
        environment = trainer._accelerator_connector.cluster_environment
        if stage != "fit" or not isinstance(environment, SLURMEnvironment) or not environment.auto_requeue:
            return
        self.signalled, self.saved = False, None
        self._signum = environment.requeue_signal
        self._previous_handler = signal.signal(self._signum, self._record)

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if self._signum is None or not trainer.strategy.reduce_boolean_decision(self.signalled, all=False):
            return
        path = trainer.strategy.broadcast(trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir))
        trainer.save_checkpoint(path)  # on every rank: a collective under FSDP
        rank_zero_info(f"requeue signal: saved {path} at step {trainer.global_step}")
        self.saved = path

    def _requeue(self, trainer: L.Trainer) -> None:
        if self.saved is None:
            return
        job = slurm_job_id()
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.save()  # SLURM stops the job soon after the requeue
            result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
            problem = None if result.returncode == 0 else result.stderr.strip() or f"exit status {result.returncode}"
        else:
            problem = None
        problem = trainer.strategy.broadcast(problem)
        if problem is not None:
            raise Requeued(f"scontrol requeue failed ({problem}); resume from {self.saved} with --ckpt_path last")
        rank_zero_info(f"requeued SLURM job {job}; it resumes from {self.saved}")
        raise Requeued(0)

    # the hooks that can follow the batch's logging: the next batch, validation, the end of the epoch (before the
    # ModelCheckpoint's own epoch-end hook, which runs after the other callbacks')
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

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exception: BaseException) -> None:
        # after an exception no teardown hook runs, and Lightning's signal teardown, which runs after this hook, puts
        # back the handlers it found when fit started (this one among them): have it put back the one before
        if self._signum is not None:
            trainer._signal_connector._original_handlers[self._signum] = self._previous_handler or signal.SIG_DFL
            self._signum = None
