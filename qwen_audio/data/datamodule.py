"""LightningDataModule: JSONL manifests (or a generated corpus's) -> duration-bucketed loaders.

The loaders are resumable.

The data module does not choose its tokenizer. The model's is given to it by
:meth:`AudioTextDataModule.connect` (as in litgpt). So a model loaded from a folder trains on that
folder's vocabulary, and ``data`` needs no model config."""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

import lightning as L
import soundfile
from torch.utils.data import ConcatDataset, DataLoader

from qwen_audio.data.augment import Augment, Augmenter
from qwen_audio.data.check import entry_clips, require_decodable
from qwen_audio.data.corpus import Corpus, corpus_read, resolve
from qwen_audio.data.dataset import AudioTextDataset, AugmentedConcatDataset
from qwen_audio.data.loaders import ModelInputs, TrainingPosition, batch_loader, bucket_sampler
from qwen_audio.data.manifest import ManifestEntry, read_manifest
from qwen_audio.data.sampler import DurationBucketSampler, EpochTaggedBatches
from qwen_audio.data.shard import is_shard_folder
from qwen_audio.data.streaming import StreamingAudioTextDataset, StreamLoader
from qwen_audio.errors import InputError
from qwen_audio.prompts import family_tasks
from qwen_audio.tokenizer import Tokenizer


def entry_seconds(entry: ManifestEntry) -> float:
    """The entry's duration: its ``duration`` field, else from the file header (no decoding)."""
    if entry.duration is not None:
        return entry.duration
    return soundfile.info(entry.audio).duration - entry.offset


class AudioTextDataModule(L.LightningDataModule):
    """Train/validation/test loaders over JSONL manifests.

    Args:
        train, val, test: manifest paths. ``<name>:<manifest>`` names a file of ``corpus``, built on
            first use. With ``streaming``, ``train`` may also name shard folders
            (``python -m qwen_audio.data.shard``).
        weights: one mixing weight per training manifest. By default, every example comes once per
            epoch.
        max_seconds: padded audio seconds per batch (``batch size * longest clip``).
        max_length: the longest token sequence allowed. A longer example is an error naming it.
        sortagrad_epochs: training epochs at the start that take their batches shortest clips first
            instead of shuffled (SortaGrad). Short clips align quickly, and what the model learns on
            them carries to long ones.
        on_error: ``raise`` stops at the first bad manifest line. ``skip`` skips bad lines and warns
            with their count.
        corpus: the generated corpus that ``<name>:<manifest>`` paths name
            (:class:`~qwen_audio.data.corpus.Corpus`). A config gives it as a ``class_path``.
        streaming: read the training manifests line by line instead of indexing them
            (:class:`~qwen_audio.data.streaming.StreamingAudioTextDataset`). This is for corpora too
            large to hold in memory. The stream never ends, so set ``trainer.max_steps`` and an
            integer ``val_check_interval``.
        buffer_size: entries a streaming reader gathers. It sorts them by duration and packs them
            into batches.
        cache: keep every encoded example of the indexed splits in memory after its first load
            (:class:`~qwen_audio.data.dataset.AudioTextDataset`). Epochs after the first then skip
            decoding and the log-mel. Use it for corpora that fit in memory.
        augment: on-the-fly augmentation of the training examples
            (:class:`~qwen_audio.data.augment.Augment`: speed, reverberation, noise, gain). It is
            seeded by ``(seed, epoch, example index)``. Its noise and impulse-response manifests may
            name files of ``corpus``. Indexed manifests only.
        validate: the check before step 0. ``header`` reads each audio file's header (a missing or
            unreadable file, a segment past its end). ``decode`` also decodes every clip of the
            indexed splits. It stops with each one that does not decode, holds NaN/inf or is silent
            (``python -m qwen_audio.data.check --decode``).

    The loaders need the model's tokenizer and mel bins. Call :meth:`connect` first (the recipes'
    CLI does).
    """

    dataset_class: type[AudioTextDataset] = AudioTextDataset  # how an entry becomes an example

    def __init__(
        self,
        train: list[str] | None = None,
        val: list[str] | None = None,
        test: list[str] | None = None,
        weights: list[float] | None = None,
        max_seconds: float = 60.0,
        max_length: int = 2048,
        num_buckets: int = 10,
        sortagrad_epochs: int = 0,
        num_workers: int = 0,
        seed: int = 0,
        on_error: Literal["raise", "skip"] = "raise",
        corpus: Corpus | None = None,
        streaming: bool = False,
        buffer_size: int = 1000,
        cache: bool = False,
        augment: Augment | None = None,
        validate: Literal["header", "decode"] = "header",
    ) -> None:
        super().__init__()
        self.manifests = {"train": train or [], "val": val or [], "test": test or []}
        self.weights, self.max_seconds, self.max_length = weights, max_seconds, max_length
        self.num_buckets, self.num_workers, self.seed, self.on_error = (
            num_buckets,
            num_workers,
            seed,
            on_error,
        )
        self.sortagrad_epochs = sortagrad_epochs
        self.corpus, self.streaming, self.buffer_size, self.cache = (
            corpus,
            streaming,
            buffer_size,
            cache,
        )
        self.augment = augment if augment is not None and augment.enabled else None
        if self.augment is not None and streaming:
            raise InputError(
                "data.augment: augmentation reads indexed manifests; turn data.streaming off"
            )
        self.validate = validate
        self.inputs = ModelInputs(type(self).__name__)
        self.entries: dict[str, list[list[ManifestEntry]]] = {}
        self.position = TrainingPosition()

    def connect(self, tokenizer: Tokenizer, n_mels: int) -> None:
        """Take the model's tokenizer and the mel bins of its encoder.

        The examples are built with them.
        """
        self.inputs.connect(tokenizer, n_mels)

    @property
    def tokenizer(self) -> Tokenizer:
        return self.inputs.tokenizer

    @property
    def n_mels(self) -> int:
        return self.inputs.n_mels

    @property
    def training_corpus(self) -> Corpus | None:
        """The corpus the training split reads, if any.

        An export records it for evaluation."""
        return corpus_read(self.corpus, self.manifests["train"])

    def _resolve(self, manifest: str) -> str:
        return resolve(self.corpus, manifest)

    def prepare_data(self) -> None:
        for manifest in (m for ms in self.manifests.values() for m in ms):
            self._resolve(manifest)  # builds a generated corpus once, on the main process

    def setup(self, stage: str | None = None) -> None:
        tasks = family_tasks(
            self.tokenizer.family
        )  # a task the model's family has no prompt for fails at its line
        for split, manifests in self.manifests.items():
            if split not in self.entries and not (split == "train" and self.streaming):
                if shards := [m for m in manifests if is_shard_folder(m)]:
                    raise InputError(
                        f"data.{split}: {shards} are shard folders, which only a "
                        "streamed training split reads (data.streaming: true); "
                        "give the manifests they came from"
                    )
                self.entries[split] = [
                    read_manifest(
                        self._resolve(m), tasks=tasks, check_audio=True, on_error=self.on_error
                    )
                    for m in manifests
                ]
                if self.validate == "decode":
                    require_decodable(
                        entry_clips(e for entries in self.entries[split] for e in entries)
                    )

    def _augmenter(self) -> Augmenter:
        """The training split's augmentation, its manifests resolved through ``corpus`` and read."""
        config = self.augment
        manifests = {
            name: self._resolve(getattr(config, name))
            for name in ("noise", "rir")
            if getattr(config, name)
        }
        return Augmenter.from_config(replace(config, **manifests))

    def _loader(self, split: str, shuffle: bool) -> tuple[DataLoader, DurationBucketSampler]:
        groups = self.entries[split]
        sampler = bucket_sampler(
            split,
            self.manifests[split],
            [[entry_seconds(e) for e in entries] for entries in groups],
            self.max_seconds,
            weights=self.weights if split == "train" else None,
            num_buckets=self.num_buckets,
            seed=self.seed,
            shuffle=shuffle,
            sortagrad_epochs=self.sortagrad_epochs,
        )
        augmenter = self._augmenter() if split == "train" and self.augment is not None else None
        datasets = [
            self.dataset_class(
                entries,
                self.tokenizer,
                self.max_length,
                self.n_mels,
                self.on_error,
                self.cache,
                augmenter,
            )
            for entries in groups
        ]
        dataset, batches = ConcatDataset(datasets), sampler
        if augmenter is not None:
            dataset = AugmentedConcatDataset(datasets, self.seed)
            batches = EpochTaggedBatches(sampler)
        return batch_loader(dataset, batches, self.tokenizer.eod, self.num_workers), sampler

    def train_dataloader(self) -> DataLoader:
        if self.streaming:
            return self._streaming_loader()
        loader, sampler = self._loader("train", shuffle=True)
        self.position.follow(sampler)
        return loader

    def _streaming_loader(self) -> DataLoader:
        stream = StreamingAudioTextDataset(
            [self._resolve(m) for m in self.manifests["train"]],
            self.tokenizer,
            self.max_seconds,
            weights=self.weights,
            max_length=self.max_length,
            n_mels=self.n_mels,
            buffer_size=self.buffer_size,
            seed=self.seed,
            on_error=self.on_error,
        )
        return StreamLoader(stream, self._batches_trained, num_workers=self.num_workers)

    def _batches_trained(self) -> int:
        """Training batches consumed over all epochs (restored from a resumed run's checkpoint)."""
        return (
            0
            if self.trainer is None
            else self.trainer.fit_loop.epoch_loop.batch_progress.total.processed
        )

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)[0]

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)[0]

    def state_dict(self) -> dict:
        """The training sampler's position (:class:`~qwen_audio.data.loaders.TrainingPosition`).

        The streamed path needs none. Its loader reads the position from the trainer's restored
        batch count."""
        return self.position.state_dict(self.trainer)

    def load_state_dict(self, state: dict) -> None:
        self.position.load_state_dict(state)
