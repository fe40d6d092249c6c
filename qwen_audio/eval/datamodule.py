"""LightningDataModule for evaluation: official prompts from a benchmark file, batched per rank.

A generated corpus can stand in for the benchmark file. Each batch holds one benchmark's items,
since they share a generation length. They are left-padded as the release pads them. Batches are
dealt to ranks round-robin with no padding or repetition. The gathered predictions thus hold every
item exactly once. Lightning's distributed sampler must stay off
(``trainer.use_distributed_sampler: false``).

The module does not build a tokenizer, because the model evaluated owns it. The CLI hands it over
with :meth:`connect` (as litgpt's data modules receive theirs), with the number of mel bins its
encoder reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal, NamedTuple

import lightning as L
from torch.utils.data import DataLoader, Dataset

from qwen_audio.batching import PromptBatch, batch_prompts
from qwen_audio.data.corpus import Corpus
from qwen_audio.data.manifest import ManifestEntry, read_manifest
from qwen_audio.eval.tasks import BenchmarkItem, get_benchmark, read_benchmark_file
from qwen_audio.prompts import Example, encode_text, task_target
from qwen_audio.tokenizer import Tokenizer


def corpus_items(
    corpus: Corpus, entries: Sequence[ManifestEntry], condition: str | None = None
) -> list[BenchmarkItem]:
    """A corpus's entries as evaluation items, each scored as the benchmark the corpus names for it.

    Each benchmark and ``condition`` is one source (``<benchmark>_<condition>``), so robustness rows
    score apart.
    """
    items = []
    for entry in entries:
        name = corpus.benchmark(entry)
        get_benchmark(name)  # a task without a benchmark is an error here, not a silent skip
        source = name + (f"_{condition}" if condition else "")
        target = task_target(entry.task, entry.text, entry.words, entry.duration)
        items.append(BenchmarkItem(entry.audio, target, source, name, entry.question))
    return items


def corpus_answers(corpus: Corpus, entries: Sequence[ManifestEntry]) -> dict[str, list[str]]:
    """The answers of a corpus's entries, per benchmark.

    Those of the training split give the majority baseline
    (:func:`qwen_audio.eval.metrics.majority_accuracy`).
    """
    answers: dict[str, list[str]] = {}
    for item in corpus_items(corpus, entries):
        answers.setdefault(item.benchmark, []).append(item.gt)
    return answers


@dataclass(frozen=True)
class PromptSample:
    """An item, its index in the file, and its official prompt with the decoded audio."""

    index: int
    item: BenchmarkItem
    prompt: Example


class BenchmarkDataset(Dataset):
    """Builds each item's official prompt, without target, with its decoded audio.

    The prompt is the one for the tokenizer's family. The prompt text is tokenized as the release
    scripts tokenize it: every special-token text is the token.
    """

    def __init__(self, items: Sequence[BenchmarkItem], tokenizer: Tokenizer) -> None:
        self.items, self.tokenizer = items, tokenizer

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> PromptSample:
        item = self.items[index]
        text = get_benchmark(item.benchmark).prompt(item, self.tokenizer.family)
        prompt = encode_text(self.tokenizer, text)
        return PromptSample(index, item, prompt)


class BenchmarkBatch(NamedTuple):
    """One benchmark's prompts, left-padded, with their items and the items' indices in the file.

    A named tuple, so Lightning's device transfer moves the prompts' tensors and keeps the rest as
    it is.
    """

    prompts: PromptBatch
    items: list[BenchmarkItem]
    indices: list[int]


def collate_prompts(samples: Sequence[PromptSample], pad_id: int, n_mels: int) -> BenchmarkBatch:
    """Batch the samples' prompts beside their items and file indices.

    The prompts' encoder input has ``n_mels`` bins.
    """
    prompts = batch_prompts([s.prompt for s in samples], pad_id, n_mels)
    return BenchmarkBatch(prompts, [s.item for s in samples], [s.index for s in samples])


def benchmark_batches(
    items: Sequence[BenchmarkItem], batch_size: int | None, rank: int = 0, world_size: int = 1
) -> list[list[int]]:
    """This rank's batches of item indices, dealt to ranks round-robin.

    Each benchmark's items stay in file order, in batches of ``batch_size``. By default that is the
    benchmark's own, from the release's EVALUATION.md.
    """
    by_benchmark: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        by_benchmark.setdefault(item.benchmark, []).append(index)
    batches = []
    for name, indices in by_benchmark.items():
        size = batch_size or get_benchmark(name).batch_size
        batches += [indices[start : start + size] for start in range(0, len(indices), size)]
    return batches[rank::world_size]


class BenchmarkDataModule(L.LightningDataModule):
    """Test loader over one benchmark's evaluation file, or over a generated corpus.

    Args:
        benchmark: A name of :data:`qwen_audio.eval.tasks.BENCHMARKS`, or the name of ``corpus``.
            The corpus name means every task in it, each scored as the benchmark the corpus names
            (:meth:`~qwen_audio.data.corpus.Corpus.benchmark`).
        path: The evaluation file. Default: the release's path of the benchmark, e.g.
            ``data/asr/librispeech_eval.jsonl``. For a corpus, a manifest of its format or
            ``<name>:<manifest>`` of it. Its default is then ``<name>:<split>``, built on first use.
        split: For a corpus, the held-out split read. ``validation`` is the split to compare
            configurations on. ``test`` is read once per shipped configuration. Each gives its clean
            items and the robustness rows the corpus has (sources ``<benchmark>_<condition>``).
        audio_root: Folder that relative ``audio`` paths are read against. Default: the file's
            folder.
        batch_size: Prompts per batch on each device. Default: the benchmark's, from the release.
        checkpoint: The released-layout folder evaluated, linked from the model by the CLI. It is
            read only for the record of the corpus its export wrote.
        corpus: The generated corpus (:class:`~qwen_audio.data.corpus.Corpus`). It is taken as the
            checkpoint's export records it (:meth:`~qwen_audio.data.corpus.Corpus.recorded`). Any
            other corpus's test split could hold the recorded corpus's training items.
    """

    def __init__(
        self,
        benchmark: str,
        path: str | None = None,
        audio_root: str | None = None,
        batch_size: int | None = None,
        num_workers: int = 0,
        checkpoint: str | None = None,
        corpus: Corpus | None = None,
        split: Literal["validation", "test"] = "test",
    ) -> None:
        super().__init__()
        self.corpus = None if corpus is None else corpus.recorded(checkpoint)
        self.reads_corpus = self.corpus is not None and benchmark == self.corpus.name
        default = f"{benchmark}:{split}" if self.reads_corpus else get_benchmark(benchmark).data
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.benchmark, self.audio_root, self.batch_size = benchmark, audio_root, batch_size
        self.num_workers = num_workers
        self.path = path or default
        self.tokenizer: Tokenizer | None = None
        self.n_mels: int | None = None
        self.items: list[BenchmarkItem] | None = None
        self.train_answers: dict[str, list[str]] = {}

    def connect(self, tokenizer: Tokenizer, n_mels: int) -> None:
        """Take the evaluated model's tokenizer and its encoder's number of mel bins.

        The tokenizer serves the prompts and the padding.
        """
        self.tokenizer, self.n_mels = tokenizer, n_mels

    def _corpus_rows(self) -> list[tuple[str, str | None]]:
        """The ``(manifest, condition)`` pairs to read.

        They are a held-out split of the corpus with its robustness rows.
        """
        rows = [
            (f"{self.path}_{condition}", condition)
            for condition in self.corpus.conditions(self.path)
        ]
        return [(self.path, None), *rows]

    def prepare_data(self) -> None:
        if self.reads_corpus:
            self.corpus.resolve(self.path)  # builds the corpus once, on the main process

    def setup(self, stage: str | None = None) -> None:
        if self.items is None:
            if self.reads_corpus:
                self.items = [
                    item
                    for path, condition in self._corpus_rows()
                    for item in corpus_items(
                        self.corpus,
                        read_manifest(self.corpus.resolve(path), check_audio=True),
                        condition,
                    )
                ]
                if self.corpus.names(self.path):
                    train = read_manifest(self.corpus.files()["train"])
                    self.train_answers = corpus_answers(self.corpus, train)
            else:
                self.items = read_benchmark_file(self.path, self.benchmark, self.audio_root)

    def test_dataloader(self) -> DataLoader:
        if self.tokenizer is None:
            raise RuntimeError(
                "BenchmarkDataModule.connect(tokenizer, n_mels) must be called before the test loader "
                "is built (the evaluate CLI calls it with the model's)"
            )
        rank, world_size = (
            (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        )
        return DataLoader(
            BenchmarkDataset(self.items, self.tokenizer),
            batch_sampler=benchmark_batches(self.items, self.batch_size, rank, world_size),
            num_workers=self.num_workers,
            collate_fn=partial(collate_prompts, pad_id=self.tokenizer.eod, n_mels=self.n_mels),
        )
