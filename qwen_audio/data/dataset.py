"""Manifest entries -> model examples: decode, resample, log-mel, task prompt, labels.

The task prompt holds the audio placeholders.
"""

from __future__ import annotations

import bisect
import io
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
from torch.utils.data import ConcatDataset, Dataset

from qwen_audio.audio import SAMPLE_RATE, AudioSource, load_audio
from qwen_audio.clips import Recording, featurize
from qwen_audio.data.augment import Augmenter, example_generator
from qwen_audio.data.manifest import ManifestEntry
from qwen_audio.errors import AudioError
from qwen_audio.prompts import (
    IGNORE_INDEX,
    QUESTION,
    TASKS,
    Example,
    encode_task,
    task_target,
)
from qwen_audio.tokenizer import Tokenizer


@dataclass
class Sample:
    """One training example: token ids and labels, and per audio its mel and valid length.

    Each mel is ``[n_mels, frames]``.
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    mels: list[torch.Tensor]
    mel_lengths: list[int]
    task: str


SKIPPED = "skipped"  # the task of the stand-in for an example skipped at load time
# augmentation: an entry and its audio -> the changed entry (its times) and audio
Transform = Callable[[ManifestEntry, torch.Tensor], tuple[ManifestEntry, torch.Tensor]]


def load_clip(path: AudioSource, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """Samples ``start:stop`` of a training clip at 16 kHz.

    A clip that decodes to silence (every sample 0) raises :class:`AudioError`. So does one that
    does not decode or holds NaN/inf. Neither teaches the model anything."""
    clip = load_audio(path)[start:stop]
    if not clip.any():
        raise AudioError(f"audio file {path} is silent: every sample of the clip is 0")
    return clip


def stored_file(data: bytes, name: str) -> io.BytesIO:
    """An audio file's bytes, from a shard (:mod:`qwen_audio.data.shard`), as a file object.

    :func:`~qwen_audio.audio.load_audio` decodes it. Errors name it ``name``, the path it was read
    from."""
    file = io.BytesIO(data)
    file.name = name
    return file


def load_segment(entry: ManifestEntry, data: bytes | None = None) -> torch.Tensor:
    """The entry's audio at 16 kHz, cut to its ``offset``/``duration`` segment.

    ``data`` holds the bytes of its audio file when they come from a shard
    (:mod:`qwen_audio.data.shard`), not from disk. The manifest check reads headers only, to keep a
    million-line manifest cheap. Faults that only decoding shows are found here: a file that no
    longer decodes, NaN/inf samples, silence. Each raises an :class:`AudioError` that names the
    manifest line and the file."""
    start = round(entry.offset * SAMPLE_RATE)
    stop = None if entry.duration is None else start + round(entry.duration * SAMPLE_RATE)
    source = entry.audio if data is None else stored_file(data, entry.audio)
    try:
        return load_clip(source, start, stop)
    except (AudioError, OSError) as err:
        raise AudioError(f"{entry.source or entry.audio}: audio: {err}") from None


def task_example(
    tokenizer: Tokenizer,
    entry: ManifestEntry,
    *,
    with_target: bool = False,
    max_length: int = 2048,
    data: bytes | None = None,
    transform: Transform | None = None,
) -> Example:
    """The entry's task prompt, with its audio segment, in the tokenizer's family's words.

    Qwen-Audio's tags or Qwen2-Audio's instruction: see :func:`~qwen_audio.prompts.family_prompt`.
    ``with_target``: the target (:func:`~qwen_audio.prompts.task_target`) follows and is learned.
    ``data``: the bytes of the entry's audio file, when they come from a shard.
    ``transform`` (augmentation) changes the decoded audio and the entry's times first.
    """
    waveform = load_segment(entry, data)
    if transform is not None:
        entry, waveform = transform(entry, waveform)
    asked = (
        TASKS[entry.task].tag == QUESTION
    )  # the question replaces the text-language and instruction tags
    target = (
        task_target(entry.task, entry.text, entry.words, entry.duration) if with_target else None
    )
    return encode_task(
        tokenizer,
        entry.task,
        Recording(waveform, entry.audio),
        target,
        audio_language=entry.audio_language,
        text_language=None if asked else entry.text_language,
        question=entry.question,
        max_length=max_length,
    )


def encode_entry(
    entry: ManifestEntry,
    tokenizer: Tokenizer,
    max_length: int = 2048,
    n_mels: int = 80,
    on_error: Literal["raise", "skip"] = "raise",
    data: bytes | None = None,
    transform: Transform | None = None,
) -> Sample:
    """Decode the entry's audio and build its training example.

    The example holds the task prompt, target, labels and mel features. ``transform`` (augmentation)
    changes the decoded audio and the entry (its times) first. With ``on_error="skip"``, audio that
    fails to load (:func:`load_segment`) gives a warning. It also gives a stand-in of one padding
    token without label or audio (task ``skipped``). The stand-in adds nothing to the loss, and its
    batch keeps its place in the epoch's plan. So every rank still takes the step, and a resumed run
    replays the same batches."""
    try:
        example = task_example(
            tokenizer,
            entry,
            with_target=True,
            max_length=max_length,
            data=data,
            transform=transform,
        )
        mels, mel_lengths = featurize(example.clips, n_mels)
        ids, labels = torch.tensor(example.ids), torch.tensor(example.labels)
        return Sample(ids, labels, mels, mel_lengths, entry.task)
    except AudioError as err:
        if on_error == "raise":
            raise
        warnings.warn(f"skipped: {err}", stacklevel=2)
        return Sample(torch.tensor([tokenizer.eod]), torch.tensor([IGNORE_INDEX]), [], [], SKIPPED)


class AudioTextDataset(Dataset):
    """Map-style dataset over manifest entries.

    The loss covers only the target after the task prompt. ``on_error`` sets what audio that fails
    to load does (:func:`encode_entry`).

    ``cache`` keeps each encoded sample after its first load. Later epochs then skip decoding and
    the log-mel. An example is a pure function of its entry, so a cached sample is the one a fresh
    load gives. An augmented example (:meth:`augmented`) is encoded afresh and never cached. Memory
    grows to the whole split's features (about 50 KB a second of audio at 80 mel bins). Each loader
    worker keeps its own cache. Use it with ``num_workers`` 0 or persistent workers."""

    def __init__(
        self,
        entries: Sequence[ManifestEntry],
        tokenizer: Tokenizer,
        max_length: int = 2048,
        n_mels: int = 80,
        on_error: Literal["raise", "skip"] = "raise",
        cache: bool = False,
        augmenter: Augmenter | None = None,
    ) -> None:
        self.entries, self.tokenizer, self.max_length, self.n_mels = (
            entries,
            tokenizer,
            max_length,
            n_mels,
        )
        self.on_error, self.augmenter = on_error, augmenter
        self._cache: dict[int, Sample] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.entries)

    def encode(self, entry: ManifestEntry, transform: Transform | None = None) -> Sample:
        """How an entry becomes a sample (:func:`encode_entry`).

        A subclass that prompts differently overrides it."""
        return encode_entry(
            entry, self.tokenizer, self.max_length, self.n_mels, self.on_error, transform=transform
        )

    def augmented(self, index: int, generator: torch.Generator) -> Sample:
        """Example ``index``, with the augmentation that ``generator`` draws.

        An example that no transform changes is served like ``self[index]`` (from the cache).
        An augmented one is encoded afresh and not cached."""
        entry = self.entries[index]
        draw = None if self.augmenter is None else self.augmenter.draw(entry.task, generator)
        if draw is None:
            return self[index]
        return self.encode(entry, partial(self.augmenter.apply, draw))

    def __getitem__(self, index: int) -> Sample:
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        sample = self.encode(self.entries[index])
        if self._cache is not None:
            self._cache[index] = sample
        return sample


class AugmentedConcatDataset(ConcatDataset):
    """The training datasets of a data module with augmentation.

    It is indexed by ``(epoch, index)``, what :class:`~qwen_audio.data.sampler.EpochTaggedBatches`
    yields. Each example is augmented by the generator of ``(seed, epoch, index)``
    (:func:`~qwen_audio.data.augment.example_generator`). So the audio does not depend on the worker
    that loads it. A resumed run sees the audio of the uninterrupted one."""

    def __init__(self, datasets: Sequence[AudioTextDataset], seed: int) -> None:
        super().__init__(datasets)
        self.seed = seed

    def __getitem__(self, key: tuple[int, int]) -> Sample:
        epoch, index = key
        which = bisect.bisect_right(self.cumulative_sizes, index)
        local = index - (self.cumulative_sizes[which - 1] if which else 0)
        return self.datasets[which].augmented(local, example_generator(self.seed, epoch, index))
