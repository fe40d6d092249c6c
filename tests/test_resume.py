"""Kill-and-resume through a real Lightning Trainer and the real data modules: every epoch draws a
new plan, and a run killed in any epoch and resumed with ``ckpt_path="last"`` trains on the
uninterrupted run's batches with its losses.

A toy module (one weight, a loss of the batch's tokens and mel) stands in for the model, so each run
takes seconds; the sampler, the data module's state and Lightning's loops are the real ones.

Streamed training reads the manifests or the litdata shards written from them
(``python -m qwen_audio.data.shard``): both give the same batches, and both resume exactly with 0
and 2 workers, and on 2 ranks (FSDP2 over gloo).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import soundfile
import torch

from qwen_audio.data.augment import Augment
from qwen_audio.data.datamodule import AudioTextDataModule
from qwen_audio.data.manifest import ManifestEntry, write_manifest
from qwen_audio.data.shard import write_shards
from qwen_audio.tokenizer import QwenAudioTokenizer

EPOCHS = 3


class Killed(RuntimeError):
    pass


class KillAtStep(L.Callback):
    """Dies after ``step`` optimizer steps, before that step's checkpoint.

    This is what a preempted job does.
    """

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            raise Killed(f"killed at step {self.step}")


class Recorder(L.LightningModule):
    """Records, per global step, the epoch, what the batch holds (its tokens) and the loss."""

    def __init__(self, record: dict[int, tuple]):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.record = record

    def training_step(self, batch, batch_idx):
        target = batch["input_ids"].float().mean() / 1000 + batch["audio_mel"].mean()
        loss = (self.weight - target) ** 2
        rows = tuple(tuple(row[row >= 0].tolist()) for row in batch["labels"])
        self.record[self.global_step] = (self.current_epoch, rows, loss.item())
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.fixture(scope="module")
def manifests(tmp_path_factory) -> list[str]:
    """Two manifests of noise clips (0.2 to 0.8 s).

    Each line's text names its manifest and index.
    """
    folder = tmp_path_factory.mktemp("resume")
    rng = np.random.default_rng(0)
    paths = []
    for name, count in (("alpha", 14), ("beta", 6)):
        entries = []
        for i in range(count):
            seconds = round(float(rng.uniform(0.2, 0.8)), 3)
            samples = rng.normal(0, 0.1, int(seconds * 16000)).astype(np.float32)
            soundfile.write(folder / f"{name}{i}.wav", samples, 16000)
            entries.append(
                ManifestEntry(f"{name}{i}.wav", "asr", f"{name} {i}", "en", "en", duration=seconds)
            )
        write_manifest(folder / f"{name}.jsonl", entries)
        paths.append(str(folder / f"{name}.jsonl"))
    soundfile.write(folder / "noise.wav", rng.normal(0, 0.1, 16000).astype(np.float32), 16000)
    (folder / "noise.jsonl").write_text('{"audio": "noise.wav"}\n')
    return paths


def augmentation(manifests: list[str]) -> Augment:
    """Every transform but reverberation, each at half the examples (noise beside the manifests)."""
    noise = str(Path(manifests[0]).parent / "noise.jsonl")
    return Augment(speed_prob=0.5, noise=noise, noise_prob=0.5, gain_prob=0.5)


@pytest.fixture(scope="module")
def shards(manifests, tmp_path_factory) -> list[str]:
    """The manifests written as litdata shards, one folder each."""
    return [str(folder) for folder in write_shards(manifests, tmp_path_factory.mktemp("shards"))]


def fit(
    root, manifests, weights, workers, streaming, record, kill_at=None, resume=False, augment=None
):
    data = AudioTextDataModule(
        train=manifests,
        weights=weights,
        max_seconds=2.0,
        num_buckets=3,
        num_workers=workers,
        seed=4,
        streaming=streaming,
        buffer_size=8,
        augment=augment,
        cache=augment is not None,
    )
    data.connect(QwenAudioTokenizer.demo(), n_mels=80)  # the tiny preset's
    checkpoints = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=root, every_n_train_steps=2, save_last=True, save_top_k=-1
    )
    trainer = L.Trainer(
        max_epochs=EPOCHS,
        limit_train_batches=7 if streaming else None,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[checkpoints] + ([KillAtStep(kill_at)] if kill_at is not None else []),
    )
    trainer.fit(Recorder(record), datamodule=data, ckpt_path="last" if resume else None)


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("weights", [None, [1.0, 3.0]], ids=["every-example", "weighted"])
@pytest.mark.parametrize("source", ["indexed", "streamed", "sharded"])
def test_each_epoch_reshuffles_and_a_kill_in_any_epoch_resumes_exactly(
    tmp_path, manifests, shards, weights, workers, source
):
    """Streamed, an epoch is ``limit_train_batches`` batches of the endless stream; sharded, the
    same stream read from the shards, which must give the manifests' batches."""
    streaming = source != "indexed"
    if source == "sharded":
        from_manifests: dict[int, tuple] = {}
        fit(tmp_path / "manifests", manifests, weights, workers, streaming, from_manifests)
        manifests = shards
    straight: dict[int, tuple] = {}
    fit(tmp_path / "straight", manifests, weights, workers, streaming, straight)
    if source == "sharded":
        assert straight == from_manifests
    steps = len(straight)
    per_epoch = steps // EPOCHS
    assert steps == per_epoch * EPOCHS and sorted(straight) == list(range(steps))
    epochs = [
        [straight[s][1] for s in range(e * per_epoch, (e + 1) * per_epoch)] for e in range(EPOCHS)
    ]
    assert epochs[0] != epochs[1] != epochs[2] != epochs[0]  # a new plan every epoch
    if (
        weights is not None
    ):  # beta is up-sampled, alpha down-sampled: each epoch takes another subset of alpha
        subsets = [{row for batch in epoch for row in batch} for epoch in epochs]
        assert subsets[0] != subsets[1]

    for kill_at in (3, 2 * per_epoch + 1):  # in epoch 0, and in the last epoch
        root = tmp_path / f"killed{kill_at}"
        first: dict[int, tuple] = {}
        with pytest.raises(Killed):
            fit(root, manifests, weights, workers, streaming, first, kill_at=kill_at)
        resumed: dict[int, tuple] = {}
        fit(root, manifests, weights, workers, streaming, resumed, resume=True)
        start = kill_at - kill_at % 2  # the last checkpoint, every 2 steps
        assert sorted(resumed) == list(range(start, steps))
        for step in range(start, steps):
            epoch, rows, loss = resumed[step]
            assert (epoch, rows) == straight[step][:2], step
            assert loss == pytest.approx(straight[step][2], rel=1e-6, abs=1e-9), step


RANKS = textwrap.dedent("""\
    import json, sys
    import lightning as L
    import torch
    from torch.distributed.fsdp import fully_shard
    from qwen_audio.data.datamodule import AudioTextDataModule
    from qwen_audio.tokenizer import QwenAudioTokenizer

    root, sources, stop = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
    L.seed_everything(0)

    class Sharded(L.LightningModule):
        \"\"\"Records, per global step, what this rank's batch holds and the loss.\"\"\"
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 2)
            self.record = {}

        def configure_model(self):
            fully_shard(self.layer, mesh=self.device_mesh["data_parallel"])

        def training_step(self, batch, batch_idx):
            ids, mel = batch["input_ids"].float().mean() / 1000, batch["audio_mel"].mean()
            features = torch.stack([ids, mel])
            loss = ((self.layer(features) - 1) ** 2).mean()
            rows = [[t for t in row.tolist() if t >= 0] for row in batch["labels"]]
            self.record[self.global_step] = (rows, loss.item())
            with open(f"{root}/rank{self.global_rank}-{stop}.json", "w") as file:
                json.dump(self.record, file)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    class StopAtStep(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            trainer.should_stop = 0 < stop <= trainer.global_step

    data = AudioTextDataModule(train=sources, weights=[1.0, 3.0], max_seconds=2.0, seed=4,
                               streaming=True, buffer_size=8)
    data.connect(QwenAudioTokenizer.demo(), n_mels=80)
    strategy = L.pytorch.strategies.ModelParallelStrategy(data_parallel_size=2,
                                                          tensor_parallel_size=1)
    checkpoints = L.pytorch.callbacks.ModelCheckpoint(dirpath=f"{root}/checkpoints", save_last=True,
                                                      every_n_train_steps=2, save_top_k=-1)
    trainer = L.Trainer(max_steps=8, accelerator="cpu", devices=2, strategy=strategy, logger=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0, use_distributed_sampler=False,
                        callbacks=[checkpoints, StopAtStep()])
    trainer.fit(Sharded(), datamodule=data, ckpt_path="last" if stop < 0 else None)
    """)


def _fit_on_two_ranks(root, sources, stop: int) -> list[dict]:
    """``stop`` > 0: stop after that step; 0: run through; -1: resume from ``last``, run through."""
    script = root / "ranks.py"
    script.write_text(RANKS)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    command = [sys.executable, str(script), str(root), json.dumps(sources), str(stop)]
    result = subprocess.run(
        command,
        cwd=root,
        env={**os.environ, "PYTHONPATH": repo},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    records = [json.loads((root / f"rank{rank}-{stop}.json").read_text()) for rank in (0, 1)]
    return [{int(step): value for step, value in record.items()} for record in records]


@pytest.mark.slow
def test_two_ranks_under_fsdp_resume_exactly_from_shards(tmp_path, shards):
    """Two processes (FSDP2 over gloo) reading shards, stopped after step 3 and resumed from
    ``last``, train on each rank's batches of the uninterrupted run with its losses; the ranks read
    different batches."""
    sources = shards
    (tmp_path / "straight").mkdir()
    (tmp_path / "stopped").mkdir()
    straight = _fit_on_two_ranks(tmp_path / "straight", sources, 0)
    assert all(sorted(rank) == list(range(8)) for rank in straight)
    assert straight[0][0][0] != straight[1][0][0]
    _fit_on_two_ranks(tmp_path / "stopped", sources, 3)
    resumed = _fit_on_two_ranks(tmp_path / "stopped", sources, -1)
    for rank in (0, 1):
        start = min(resumed[rank])
        assert 0 < start < 8 and sorted(resumed[rank]) == list(range(start, 8))
        for step in range(start, 8):
            assert resumed[rank][step][0] == straight[rank][step][0], (rank, step)
            expected = straight[rank][step][1]
            assert resumed[rank][step][1] == pytest.approx(expected, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("workers", [0, 2])
def test_augmented_run_killed_in_any_epoch_resumes_on_the_same_audio(tmp_path, manifests, workers):
    """With augmentation (and the cache, which serves the examples no transform changes) the
    losses, which depend on the mel, of a resumed run are those of the uninterrupted run; and they
    differ from an unaugmented run's, so the augmentation is live."""
    augment = augmentation(manifests)
    plain: dict[int, tuple] = {}
    fit(tmp_path / "plain", manifests, None, workers, False, plain)
    straight: dict[int, tuple] = {}
    fit(tmp_path / "straight", manifests, None, workers, False, straight, augment=augment)
    steps = len(straight)
    same_plan = [straight[s][:2] for s in range(steps)] == [plain[s][:2] for s in range(steps)]
    assert same_plan
    changed = sum(straight[s][2] != pytest.approx(plain[s][2], rel=1e-6) for s in range(steps))
    assert changed > steps // 2
    for kill_at in (3, 2 * (steps // EPOCHS) + 1):  # in epoch 0, and in the last epoch
        root = tmp_path / f"killed{kill_at}"
        with pytest.raises(Killed):
            fit(root, manifests, None, workers, False, {}, kill_at=kill_at, augment=augment)
        resumed: dict[int, tuple] = {}
        fit(root, manifests, None, workers, False, resumed, resume=True, augment=augment)
        start = kill_at - kill_at % 2
        assert sorted(resumed) == list(range(start, steps))
        for step in range(start, steps):
            assert resumed[step][:2] == straight[step][:2], step
            assert resumed[step][2] == pytest.approx(straight[step][2], rel=1e-6, abs=1e-9), step
