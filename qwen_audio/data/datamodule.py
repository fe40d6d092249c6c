"""LightningDataModule: JSONL manifests (or the embedded demo corpus) -> duration-bucketed, resumable loaders.

The data module does not choose its tokenizer: the model's is given to it by :meth:`AudioTextDataModule.connect`
(as in litgpt), so a model loaded from a folder trains on that folder's vocabulary, and ``data`` needs no model
config."""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import Literal

import lightning as L
import soundfile
from torch.utils.data import ConcatDataset, DataLoader

from qwen_audio.data.augment import Augment, Augmenter
from qwen_audio.data.check import entry_clips, require_decodable
from qwen_audio.data.collate import collate
from qwen_audio.data.dataset import AudioTextDataset, AugmentedConcatDataset
from qwen_audio.data.demo import build_demo_corpus, corpus_fingerprint, corpus_record
from qwen_audio.data.manifest import ManifestEntry, read_manifest
from qwen_audio.data.sampler import DurationBucketSampler, EpochTaggedBatches
from qwen_audio.data.shard import is_shard_folder
from qwen_audio.data.streaming import StreamingAudioTextDataset, StreamLoader
from qwen_audio.errors import InputError
from qwen_audio.prompts import family_tasks
from qwen_audio.tokenizer import Tokenizer

DEMO_PREFIX = "demo:"


def entry_seconds(entry: ManifestEntry) -> float:
    """The entry's duration: its ``duration`` field, else read from the file header (no decoding)."""
    if entry.duration is not None:
        return entry.duration
    return soundfile.info(entry.audio).duration - entry.offset


class AudioTextDataModule(L.LightningDataModule):
    """Train/validation/test loaders over JSONL manifests.

    Args:
        train, val, test: manifest paths; ``demo:<split>`` names a split of the embedded demo corpus, built on first
            use (:func:`qwen_audio.data.demo.build_demo_corpus`). With ``streaming``, ``train``
            may also name shard folders (``python -m qwen_audio.data.shard``).
        weights: one mixing weight per training manifest (default: every example once per epoch).
        max_seconds: padded audio seconds per batch (``batch size * longest clip``).
        max_length: the longest token sequence allowed; a longer example is an error naming it.
        sortagrad_epochs: training epochs at the start that take their batches shortest clips first instead of
            shuffled (SortaGrad): short clips align quickly, and what the model learns on them carries to long ones.
        on_error: ``raise`` at the first bad manifest line, or ``skip`` bad lines and warn with their count.
        demo_size: training clips per group of the demo corpus.
        streaming: read the training manifests line by line instead of indexing them
            (:class:`~qwen_audio.data.streaming.StreamingAudioTextDataset`, for corpora too large to hold in
            memory); the stream never ends, so set ``trainer.max_steps`` and an integer ``val_check_interval``.
        buffer_size: entries a streaming reader gathers, sorts by duration and packs into batches.
        cache: keep every encoded example of the indexed splits in memory after its first load, so that epochs
            after the first skip decoding and the log-mel (:class:`~qwen_audio.data.dataset.AudioTextDataset`):
            for corpora that fit in memory.
        augment: on-the-fly augmentation of the training examples
            (:class:`~qwen_audio.data.augment.Augment`: speed, reverberation, noise, gain), seeded by
            ``(seed, epoch, example index)``; its noise and impulse-response manifests may name
            demo-corpus files (``demo:noise``). Indexed manifests only.
        validate: before step 0, ``header`` reads each audio file's header (a missing or unreadable file, a segment
            past its end); ``decode`` also decodes every clip of the indexed splits and stops with each one that
            does not decode, holds NaN/inf or is silent (``python -m qwen_audio.data.check --decode``).

    The loaders need the model's tokenizer and mel bins: call :meth:`connect` first (the recipes' CLI does).
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
        demo_size: int = 48,
        streaming: bool = False,
        buffer_size: int = 1000,
        cache: bool = False,
        augment: Augment | None = None,
        validate: Literal["header", "decode"] = "header",
    ) -> None:
        super().__init__()
        self.manifests = {"train": train or [], "val": val or [], "test": test or []}
        self.weights, self.max_seconds, self.max_length = weights, max_seconds, max_length
        self.num_buckets, self.num_workers, self.seed, self.on_error = num_buckets, num_workers, seed, on_error
        self.sortagrad_epochs = sortagrad_epochs
        self.demo_size, self.streaming, self.buffer_size, self.cache = demo_size, streaming, buffer_size, cache
        self.augment = augment if augment is not None and augment.enabled else None
        if self.augment is not None and streaming:
            raise InputError(
                "data.augment: augmentation reads indexed manifests; turn data.streaming off"
            )
        self.validate = validate
        self._model_inputs: tuple[Tokenizer, int] | None = None
        self.entries: dict[str, list[list[ManifestEntry]]] = {}
        self._sampler_state: dict | None = None
        self._train_sampler: DurationBucketSampler | None = None

    def connect(self, tokenizer: Tokenizer, n_mels: int) -> None:
        """Take the model's tokenizer and the mel bins of its encoder, which the examples are built with."""
        self._model_inputs = tokenizer, n_mels

    @property
    def tokenizer(self) -> Tokenizer:
        return self._connected()[0]

    @property
    def n_mels(self) -> int:
        return self._connected()[1]

    def _connected(self) -> tuple[Tokenizer, int]:
        if self._model_inputs is None:
            raise RuntimeError(f"{type(self).__name__} has no tokenizer yet: call connect(tokenizer, n_mels) with "
                               "the model's first (the recipes' CLI does before fit, validate, test and predict)")
        return self._model_inputs

    @property
    def demo_corpus(self) -> dict | None:
        """The :func:`~qwen_audio.data.demo.corpus_record` of the demo corpus the training split reads, if any, with
        its :func:`~qwen_audio.data.demo.corpus_fingerprint`."""
        if any(m.startswith(DEMO_PREFIX) for m in self.manifests["train"]):
            manifests = build_demo_corpus(seed=self.seed, size=self.demo_size)
            return {**corpus_record(self.seed, self.demo_size), "fingerprint": corpus_fingerprint(manifests)}
        return None

    def _resolve(self, manifest: str) -> str:
        if manifest.startswith(DEMO_PREFIX):
            return str(build_demo_corpus(seed=self.seed, size=self.demo_size)[manifest[len(DEMO_PREFIX):]])
        return manifest

    def prepare_data(self) -> None:
        for manifest in (m for ms in self.manifests.values() for m in ms):
            self._resolve(manifest)  # builds the demo corpus once, on the main process

    def setup(self, stage: str | None = None) -> None:
        tasks = family_tasks(self.tokenizer.family)  # a task the model's family has no prompt for fails at its line
        for split, manifests in self.manifests.items():
            if split not in self.entries and not (split == "train" and self.streaming):
                if shards := [m for m in manifests if is_shard_folder(m)]:
                    raise InputError(f"data.{split}: {shards} are shard folders, which only a "
                                     "streamed training split reads (data.streaming: true); "
                                     "give the manifests they came from")
                self.entries[split] = [
                    read_manifest(self._resolve(m), tasks=tasks, check_audio=True, on_error=self.on_error)
                    for m in manifests
                ]
                if self.validate == "decode":
                    require_decodable(entry_clips(e for entries in self.entries[split] for e in entries))

    def _sampler(self, split: str, lengths: list[list[float]], budget: float, weights: list[float] | None,
                 shuffle: bool) -> DurationBucketSampler:
        """The split's batch sampler; what it refuses (no example, too few for the ranks, bad weights) is an input
        error naming the split's files."""
        if not self.manifests[split]:
            raise InputError(f"data.{split}: no file given, but the trainer asks for the {split} loader")
        try:
            return DurationBucketSampler(lengths, budget, weights=weights, num_buckets=self.num_buckets,
                                         shuffle=shuffle, sortagrad_epochs=self.sortagrad_epochs, seed=self.seed)
        except ValueError as err:
            raise InputError(f"data.{split} {self.manifests[split]}: {err}") from None

    def _augmenter(self) -> Augmenter:
        """The training split's augmentation, its manifests (``demo:noise`` ...) resolved and read."""
        config = self.augment
        manifests = {
            name: self._resolve(getattr(config, name))
            for name in ("noise", "rir")
            if getattr(config, name)
        }
        return Augmenter.from_config(replace(config, **manifests))

    def _loader(self, split: str, shuffle: bool) -> tuple[DataLoader, DurationBucketSampler]:
        groups = self.entries[split]
        sampler = self._sampler(split, [[entry_seconds(e) for e in entries] for entries in groups], self.max_seconds,
                                self.weights if split == "train" else None, shuffle)
        augmenter = self._augmenter() if split == "train" and self.augment is not None else None
        datasets = [
            self.dataset_class(
                entries, self.tokenizer, self.max_length, self.n_mels, self.on_error, self.cache,
                augmenter,
            )
            for entries in groups
        ]
        dataset, batches = ConcatDataset(datasets), sampler
        if augmenter is not None:
            dataset = AugmentedConcatDataset(datasets, self.seed)
            batches = EpochTaggedBatches(sampler)
        loader = DataLoader(
            dataset, batch_sampler=batches, num_workers=self.num_workers,
            collate_fn=partial(collate, pad_id=self.tokenizer.eod), persistent_workers=self.num_workers > 0,
        )
        return loader, sampler

    def train_dataloader(self) -> DataLoader:
        if self.streaming:
            return self._streaming_loader()
        loader, self._train_sampler = self._loader("train", shuffle=True)
        if self._sampler_state is not None:
            self._train_sampler.load_state_dict(self._sampler_state)
            self._sampler_state = None
        return loader

    def _streaming_loader(self) -> DataLoader:
        stream = StreamingAudioTextDataset(
            [self._resolve(m) for m in self.manifests["train"]], self.tokenizer, self.max_seconds,
            weights=self.weights, max_length=self.max_length, n_mels=self.n_mels,
            buffer_size=self.buffer_size, seed=self.seed, on_error=self.on_error,
        )
        return StreamLoader(stream, self._batches_trained, num_workers=self.num_workers)

    def _batches_trained(self) -> int:
        """Training batches consumed over all epochs (restored from the checkpoint of a resumed run)."""
        return 0 if self.trainer is None else self.trainer.fit_loop.epoch_loop.batch_progress.total.processed

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)[0]

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)[0]

    def state_dict(self) -> dict:
        """The training sampler's position in batches *consumed* (the loader may have fetched more ahead). The
        streamed path needs none: its loader reads the position from the trainer's restored batch count."""
        if self._train_sampler is None or self.trainer is None:
            return {}
        state = self._train_sampler.state_dict()
        state["epoch"] = self.trainer.current_epoch
        state["batches_done"] = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {"train_sampler": state}

    def load_state_dict(self, state: dict) -> None:
        """Resume the training sampler. Strategies that set up optimizers before restoring (FSDP2's
        ``ModelParallelStrategy``) have built it already, through ``estimated_stepping_batches``: resume it in place."""
        self._sampler_state = state.get("train_sampler")
        if self._sampler_state is not None and self._train_sampler is not None:
            self._train_sampler.load_state_dict(self._sampler_state)
            self._sampler_state = None
