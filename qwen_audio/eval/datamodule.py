"""LightningDataModule for evaluation: a benchmark file (or the demo corpus) -> official prompts, batched per rank.

Each batch holds one benchmark's items (they share a generation length), left-padded as the release pads them.
Batches are dealt to ranks round-robin with no padding or repetition, so the gathered predictions hold every item
exactly once; Lightning's distributed sampler must stay off (``trainer.use_distributed_sampler: false``).

The module does not build a tokenizer: the model evaluated owns it, and the CLI hands it over with :meth:`connect`
(as litgpt's data modules receive theirs), with the number of mel bins its encoder reads.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import lightning as L
from torch.utils.data import DataLoader, Dataset

from qwen_audio.batching import batch_prompts
from qwen_audio.config import ConfigError
from qwen_audio.data.dataset import target_text
from qwen_audio.data.demo import CORPUS_RECORD, build_demo_corpus, corpus_fingerprint, corpus_record
from qwen_audio.data.demo.corpus import CONDITIONS
from qwen_audio.data.manifest import ManifestEntry, read_manifest
from qwen_audio.eval.tasks import BenchmarkItem, get_benchmark, read_benchmark_file
from qwen_audio.prompts import Example, encode_text
from qwen_audio.tokenizer import Tokenizer

DEMO = "demo"
DEMO_PREFIX = "demo:"


def demo_corpus(checkpoint: str | None, seed: int | None, size: int | None) -> tuple[int, int, str | None]:
    """``(seed, size, fingerprint)`` of the demo corpus to evaluate ``checkpoint`` on: the one its export records,
    else the given values (default 0 and 48) and no fingerprint. Refuses a corpus other than the recorded one, or
    one of another version."""
    path = os.path.join(checkpoint, CORPUS_RECORD) if checkpoint else None
    if path is None or not os.path.isfile(path):
        return (0 if seed is None else seed), (48 if size is None else size), None
    record = json.loads(Path(path).read_text())
    fingerprint = record.pop("fingerprint", None)  # optional: records of corpus 6 may lack it
    asked = corpus_record(record["seed"] if seed is None else seed, record["size"] if size is None else size)
    if asked != record:
        raise ConfigError(
            f"{path}: the model was trained on the demo corpus {record}, but evaluation asks for {asked}; the test "
            f"split of another corpus can hold training items of this one (drop --data.seed/--data.demo_size to "
            f"evaluate on the recorded corpus)")
    return record["seed"], record["size"], fingerprint


def demo_items(
    entries: Sequence[ManifestEntry], condition: str | None = None
) -> list[BenchmarkItem]:
    """Demo-corpus entries as evaluation items: one benchmark per task and speech language, and one
    source per benchmark and ``condition`` (``demo_asr_en``, ``demo_asr_en_noisy``, ...)."""
    items = []
    for entry in entries:
        name = f"demo_{entry.task}" + (f"_{entry.audio_language}" if entry.task in ("asr", "srwt") else "")
        get_benchmark(name)  # a task without a demo benchmark is an error here, not a silent skip
        source = name + (f"_{condition}" if condition else "")
        items.append(BenchmarkItem(entry.audio, target_text(entry), source, name, entry.question))
    return items


def demo_answers(entries: Sequence[ManifestEntry]) -> dict[str, list[str]]:
    """The answers of demo-corpus entries per ``demo_*`` benchmark: those of the training split give
    the majority baseline (:func:`qwen_audio.eval.metrics.majority_accuracy`)."""
    answers: dict[str, list[str]] = {}
    for item in demo_items(entries):
        answers.setdefault(item.benchmark, []).append(item.gt)
    return answers


@dataclass(frozen=True)
class PromptSample:
    """An item, its index in the file, and its official prompt with the decoded audio."""

    index: int
    item: BenchmarkItem
    prompt: Example


class BenchmarkDataset(Dataset):
    """Decodes each item's audio and builds the official prompt of its benchmark for the tokenizer's family (no
    target), tokenized as the release scripts tokenize the prompt text: every special-token text is the token."""

    def __init__(self, items: Sequence[BenchmarkItem], tokenizer: Tokenizer) -> None:
        self.items, self.tokenizer = items, tokenizer

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> PromptSample:
        item = self.items[index]
        text = get_benchmark(item.benchmark).prompt(item, self.tokenizer.family)
        prompt = encode_text(self.tokenizer, text)
        return PromptSample(index, item, prompt)


def collate_prompts(samples: Sequence[PromptSample], pad_id: int, n_mels: int) -> dict:
    """The left-padded :class:`~qwen_audio.batching.PromptBatch` fields (``n_mels`` bins of encoder input), and the
    items with their file indices."""
    batch = batch_prompts([s.prompt for s in samples], pad_id, n_mels)
    return {**batch._asdict(), "index": [s.index for s in samples], "items": [s.item for s in samples]}


def benchmark_batches(items: Sequence[BenchmarkItem], batch_size: int | None, rank: int = 0, world_size: int = 1
                      ) -> list[list[int]]:
    """This rank's batches of item indices: each benchmark's items in file order, in batches of ``batch_size``
    (default: the benchmark's own, from the release's EVALUATION.md), dealt to ranks round-robin."""
    by_benchmark: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        by_benchmark.setdefault(item.benchmark, []).append(index)
    batches = []
    for name, indices in by_benchmark.items():
        size = batch_size or get_benchmark(name).batch_size
        batches += [indices[start : start + size] for start in range(0, len(indices), size)]
    return batches[rank::world_size]


class BenchmarkDataModule(L.LightningDataModule):
    """Test loader over one benchmark's evaluation file.

    Args:
        benchmark: a name of :data:`qwen_audio.eval.tasks.BENCHMARKS`, or ``demo`` for the demo corpus (every task
            in it, each scored as its ``demo_*`` benchmark).
        path: the evaluation file (default: the release's path of the benchmark, e.g.
            ``data/asr/librispeech_eval.jsonl``); for ``demo`` a demo-format manifest or
            ``demo:<name>`` of the demo corpus (default ``demo:<split>``, built on first use).
        split: for ``demo``, the held-out split read: ``validation`` (to compare configurations
            on) or ``test`` (read once per shipped configuration). Each gives its clean items and
            its noisy and unseen-voice ASR rows (sources ``demo_asr_en_noisy``, ...).
        audio_root: folder that relative ``audio`` paths are read against (default: the file's folder).
        batch_size: prompts per batch on each device (default: the benchmark's, from the release).
        checkpoint: the released-layout folder evaluated (linked from the model by the CLI), read only for the
            ``demo_corpus.json`` its export records.
        seed, demo_size: of the demo corpus (:func:`qwen_audio.data.demo.build_demo_corpus`). By default those
            of the corpus the checkpoint was trained on (its ``demo_corpus.json``), which it must then match: any other
            corpus's test split could hold that corpus's training items; without a record, seed 0 and size 48.
    """

    def __init__(
        self,
        benchmark: str,
        path: str | None = None,
        audio_root: str | None = None,
        batch_size: int | None = None,
        num_workers: int = 0,
        checkpoint: str | None = None,
        seed: int | None = None,
        demo_size: int | None = None,
        split: Literal["validation", "test"] = "test",
    ) -> None:
        super().__init__()
        if benchmark != DEMO:
            get_benchmark(benchmark)
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.benchmark, self.audio_root, self.batch_size = benchmark, audio_root, batch_size
        self.num_workers = num_workers
        default = f"{DEMO_PREFIX}{split}" if benchmark == DEMO else get_benchmark(benchmark).data
        self.path = path or default
        self.seed, self.demo_size, self.fingerprint = demo_corpus(checkpoint, seed, demo_size)
        self.tokenizer: Tokenizer | None = None
        self.n_mels: int | None = None
        self.items: list[BenchmarkItem] | None = None
        self.train_answers: dict[str, list[str]] = {}

    def connect(self, tokenizer: Tokenizer, n_mels: int) -> None:
        """Take the evaluated model's tokenizer (prompts, padding) and its encoder's number of mel bins."""
        self.tokenizer, self.n_mels = tokenizer, n_mels

    def _manifest(self, path: str) -> str:
        if not path.startswith(DEMO_PREFIX):
            return path
        manifests = build_demo_corpus(seed=self.seed, size=self.demo_size)
        built = corpus_fingerprint(manifests) if self.fingerprint is not None else None
        if built != self.fingerprint:
            raise ConfigError(
                f"{manifests['train'].parent}: this demo corpus has fingerprint {built}, but the model was trained "
                f"on one of fingerprint {self.fingerprint}, with the same version, seed and size: other generation "
                "code built one of them. Remove the folder to rebuild it with this code, and bump DEMO_VERSION "
                "whenever the generation changes")
        return str(manifests[path[len(DEMO_PREFIX):]])

    def _demo_rows(self) -> list[tuple[str, str | None]]:
        """``(manifest, condition)`` read: a held-out demo split with its robustness rows."""
        if self.path in (f"{DEMO_PREFIX}validation", f"{DEMO_PREFIX}test"):
            rows = [(f"{self.path}_{condition}", condition) for condition in CONDITIONS]
            return [(self.path, None), *rows]
        return [(self.path, None)]

    def prepare_data(self) -> None:
        if self.benchmark == DEMO:
            self._manifest(self.path)  # builds the demo corpus once, on the main process

    def setup(self, stage: str | None = None) -> None:
        if self.items is None:
            if self.benchmark == DEMO:
                self.items = [
                    item
                    for path, condition in self._demo_rows()
                    for item in demo_items(
                        read_manifest(self._manifest(path), check_audio=True), condition
                    )
                ]
                if self.path.startswith(DEMO_PREFIX):
                    train = build_demo_corpus(seed=self.seed, size=self.demo_size)["train"]
                    self.train_answers = demo_answers(read_manifest(train))
            else:
                self.items = read_benchmark_file(self.path, self.benchmark, self.audio_root)

    def test_dataloader(self) -> DataLoader:
        if self.tokenizer is None:
            raise RuntimeError("BenchmarkDataModule.connect(tokenizer, n_mels) must be called before the test loader "
                               "is built (the evaluate CLI calls it with the model's)")
        rank, world_size = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        return DataLoader(
            BenchmarkDataset(self.items, self.tokenizer),
            batch_sampler=benchmark_batches(self.items, self.batch_size, rank, world_size),
            num_workers=self.num_workers,
            collate_fn=partial(collate_prompts, pad_id=self.tokenizer.eod, n_mels=self.n_mels),
        )
