"""Training batches streamed from JSONL manifests or litdata shards, for corpora too large to index.

The map-style path (:class:`~qwen_audio.data.sampler.DurationBucketSampler`) holds every entry's
duration to plan an epoch. Here nothing is indexed up front. Each reader (one per rank and
DataLoader worker) parses only its own lines of each manifest
(:func:`~qwen_audio.data.manifest.iter_manifest` with ``shard``). N readers thus read a file once
between them.

A source may also be a shard folder written by ``python -m qwen_audio.data.shard``
(:func:`~qwen_audio.data.shard.read_shards`). Such a folder holds litdata chunks with the lines and
their audio files' bytes. They are read through ``litdata.StreamingDataset`` from a local folder or
an object store. At the scale of the paper's stage 1 (some 30 corpora, millions of clips), opening
one file per clip on network storage is what limits the loader. A few chunks per reader do not.

A shard folder keeps its manifest's order, so a reader takes the same entries from it as from the
manifest. The plan below (weighted draws, duration-packed batches, resume by replay) thus gives the
same batches from either. The litdata loader (``StreamingDataLoader``) is not used. It batches a
fixed number of items and resumes by items. A batch here is a duration-packed group within
``max_seconds`` and resumes by batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from qwen_audio.data.collate import collate
from qwen_audio.data.dataset import encode_entry
from qwen_audio.data.manifest import ManifestEntry, ManifestError, iter_manifest
from qwen_audio.data.sampler import pack_batches
from qwen_audio.data.shard import is_shard_folder, read_shards
from qwen_audio.errors import InputError
from qwen_audio.prompts import family_tasks
from qwen_audio.tokenizer import Tokenizer

Item = tuple[ManifestEntry, bytes | None]  # an entry, and its audio file's bytes if from a shard


class StreamingAudioTextDataset(IterableDataset):
    """Yields collated batches (use ``DataLoader(dataset, batch_size=None)``) forever.

    Each reader draws its next entry from the manifests with probability proportional to
    ``weights``. It gathers ``buffer_size`` entries, sorts them by duration and packs them into
    batches within ``max_seconds``. It yields the batches in shuffled order. A manifest that runs
    out starts its next pass. The stream thus never ends and every rank always has a batch. Training
    stops at ``trainer.max_steps``. Every draw comes from ``(seed, reader)``.

    Entries need a ``duration``, since batches are planned before any audio is decoded. ``skip(n)``
    resumes after the first ``n`` batches of the whole loader. Each reader replays its plan without
    decoding the batches already consumed. With ``num_workers`` the loader takes batches from its
    workers in turn. That order decides their share.
    """

    def __init__(
        self,
        manifests: Sequence[str],  # JSONL manifests or shard folders
        tokenizer: Tokenizer,
        max_seconds: float,
        *,
        weights: Sequence[float] | None = None,
        max_length: int = 2048,
        n_mels: int = 80,
        buffer_size: int = 1000,
        seed: int = 0,
        on_error: str = "raise",
    ) -> None:
        if not manifests:
            raise InputError("data.train: no manifest to stream")
        weights = (
            np.ones(len(manifests)) if weights is None else np.asarray(weights, dtype=np.float64)
        )
        if weights.shape != (len(manifests),) or (weights < 0).any() or weights.sum() <= 0:
            raise InputError(
                f"data.weights: expected one non-negative weight per manifest of {list(manifests)}, "
                f"got {weights}"
            )
        self.manifests, self.probabilities = list(manifests), weights / weights.sum()
        self.tokenizer, self.max_seconds, self.max_length, self.n_mels = (
            tokenizer,
            max_seconds,
            max_length,
            n_mels,
        )
        self.buffer_size, self.seed, self.on_error = buffer_size, seed, on_error
        self.batches_done = 0

    def skip(self, batches: int) -> None:
        """Continue after ``batches`` batches of the whole loader.

        This is the resume point of a checkpoint.
        """
        self.batches_done = batches

    def _reader(self) -> tuple[int, int, int]:
        """The reader of the calling rank and worker.

        Returns ``(reader index, number of readers, number of workers)``.
        """
        distributed = dist.is_available() and dist.is_initialized()
        rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
        worker = get_worker_info()
        worker_id, workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        return rank * workers + worker_id, world * workers, workers

    def _entries(self, path: str, reader: int, readers: int) -> Iterator[Item]:
        """This reader's entries of ``path``, pass after pass.

        Each comes with its audio file's bytes when ``path`` is a shard folder. Otherwise the bytes
        are ``None`` and the file is read when the batch is built.
        """
        tasks = family_tasks(self.tokenizer.family)
        while True:
            empty = True
            if is_shard_folder(path):
                items = read_shards(path, tasks=tasks, shard=(reader, readers))
            else:
                items = (
                    (e, None)
                    for e in iter_manifest(
                        path, tasks=tasks, on_error=self.on_error, shard=(reader, readers)
                    )
                )
            for entry, data in items:
                if entry.duration is None:
                    raise ManifestError(
                        f"entry {entry.audio} has no duration; streaming needs one on every line",
                        path=path,
                    )
                if entry.duration > self.max_seconds:
                    raise ManifestError(
                        f"{entry.audio} lasts {entry.duration} s, more than max_seconds="
                        f"{self.max_seconds}",
                        path=path,
                    )
                empty = False
                yield entry, data
            if empty:
                raise ManifestError(
                    f"no entries for reader {reader} of {readers}; use fewer workers or ranks",
                    path=path,
                )

    def _planned(self, reader: int, readers: int) -> Iterator[list[Item]]:
        """The reader's batches of entries, before decoding."""
        rng = np.random.default_rng([self.seed, reader])
        streams = [self._entries(path, reader, readers) for path in self.manifests]
        while True:
            choices = rng.choice(len(streams), size=self.buffer_size, p=self.probabilities)
            buffer = [next(streams[c]) for c in choices]
            order = sorted(range(len(buffer)), key=lambda i: buffer[i][0].duration)
            batches = pack_batches(order, [entry.duration for entry, _ in buffer], self.max_seconds)
            for b in rng.permutation(len(batches)):
                yield [buffer[i] for i in batches[b]]

    def __iter__(self) -> Iterator[dict]:
        reader, readers, workers = self._reader()
        worker = reader % workers
        already = len(
            range(worker, self.batches_done, workers)
        )  # this worker's share of the consumed batches
        for position, entries in enumerate(self._planned(reader, readers)):
            if position >= already:
                samples = [
                    encode_entry(
                        e, self.tokenizer, self.max_length, self.n_mels, self.on_error, data
                    )
                    for e, data in entries
                ]
                yield collate(samples, self.tokenizer.eod)


class StreamLoader(DataLoader):
    """Loads a :class:`StreamingAudioTextDataset`, starting each iteration where training is.

    Every iteration starts after the ``consumed()`` batches. Lightning iterates the loader anew at
    each epoch (with ``limit_train_batches``) and after a resume. Each time, the loader reads the
    position from training's own batch count. The stream thus goes on across epochs instead of
    replaying its start. A resumed run continues exactly where its checkpoint was taken. Workers are
    started per iteration (not persistent), so they receive the new position. Each replays its plan
    up to there without decoding. That replay reads its manifest lines again. An endless epoch
    (``max_steps`` and an integer ``val_check_interval``) never pays that.
    """

    def __init__(
        self, dataset: StreamingAudioTextDataset, consumed: Callable[[], int], num_workers: int = 0
    ) -> None:
        super().__init__(dataset, batch_size=None, num_workers=num_workers)
        self.consumed = consumed

    def __iter__(self):
        self.dataset.skip(self.consumed())
        return super().__iter__()
