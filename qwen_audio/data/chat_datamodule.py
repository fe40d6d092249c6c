"""LightningDataModule for SFT: conversation JSONL (a generated corpus's, or shards of either) ->
token-bucketed, resumable loaders.

The loaders mix conversations with audio and pure-text conversations at a set ratio."""

from __future__ import annotations

from typing import Literal

import lightning as L
from torch.utils.data import ConcatDataset, DataLoader

from qwen_audio.data.check import conversation_clips, require_decodable
from qwen_audio.data.conversations import (
    Conversation,
    ConversationDataset,
    read_conversations,
    token_length,
)
from qwen_audio.data.corpus import Corpus, corpus_read, resolve
from qwen_audio.data.loaders import ModelInputs, TrainingPosition, batch_loader, bucket_sampler
from qwen_audio.data.sampler import DurationBucketSampler
from qwen_audio.data.shard import is_shard_folder, read_conversation_shard
from qwen_audio.errors import InputError
from qwen_audio.tokenizer import Tokenizer


class ChatDataModule(L.LightningDataModule):
    """Train/validation/test loaders over conversation JSONL files
    (:mod:`qwen_audio.data.conversations`) or their shards (:mod:`qwen_audio.data.shard`).

    Batching uses :class:`DurationBucketSampler` with each conversation's *token count* as its
    length and ``max_tokens`` as the budget. In stage 2 the encoder is frozen and small beside the
    LLM. The LLM's memory grows with the padded tokens (``batch size * longest conversation``). So
    SFT buckets by tokens rather than audio seconds. Conversations with audio and pure-text ones are
    the sampler's two groups, and ``text_ratio`` sets their weights. Resuming mid-epoch works as in
    :class:`~qwen_audio.data.datamodule.AudioTextDataModule`, since both compose the parts of
    :mod:`qwen_audio.data.loaders`. An option of that module which this one does not use is refused,
    not ignored.

    Args:
        train, val, test: conversation files, or shard folders written from them
            (``python -m qwen_audio.data.shard --conversations``). ``<name>:<split>`` names a file
            of ``corpus``, built on first use.
        text_ratio: the share of pure-text conversations in each training epoch. The epoch keeps its
            total size (``None``: every conversation once per epoch).
        max_tokens: padded tokens per batch. It is at least ``max_length``, so that any conversation
            fits in a batch.
        max_length: the longest conversation allowed, in tokens with audio placeholders. A longer
            one is an error naming its file and line.
        corpus: the generated corpus that ``<name>:<split>`` paths name
            (:class:`~qwen_audio.data.corpus.Corpus`). Its conversation ids give the question
            families that reports group answers by.
        validate: ``decode`` also decodes every clip before step 0 (see ``AudioTextDataModule``).
    """

    def __init__(
        self,
        train: list[str] | None = None,
        val: list[str] | None = None,
        test: list[str] | None = None,
        text_ratio: float | None = None,
        max_tokens: int = 8192,
        max_length: int = 2048,
        num_buckets: int = 10,
        num_workers: int = 0,
        seed: int = 0,
        corpus: Corpus | None = None,
        validate: Literal["header", "decode"] = "header",
    ) -> None:
        super().__init__()
        if text_ratio is not None and not 0.0 <= text_ratio <= 1.0:
            raise InputError(f"data.text_ratio must lie in [0, 1], got {text_ratio}")
        if max_tokens < max_length:
            raise InputError(
                f"data.max_tokens ({max_tokens}) must be at least data.max_length ({max_length})"
            )
        self.manifests = {"train": train or [], "val": val or [], "test": test or []}
        self.text_ratio, self.max_tokens, self.max_length = text_ratio, max_tokens, max_length
        self.num_buckets, self.num_workers, self.seed = num_buckets, num_workers, seed
        self.corpus, self.validate = corpus, validate
        self.inputs = ModelInputs(type(self).__name__)
        self.position = TrainingPosition()
        self.conversations: dict[
            str, list[list[Conversation]]
        ] = {}  # split -> [with audio, pure text]
        self.lengths: dict[str, list[list[int]]] = {}

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

    def question_family(self, conversation_id: str) -> str:
        """The question family of a conversation, as ``corpus`` reads its ids.

        Without a ``corpus``, it is the id itself."""
        return (
            conversation_id if self.corpus is None else self.corpus.question_family(conversation_id)
        )

    def prepare_data(self) -> None:
        for file in (f for files in self.manifests.values() for f in files):
            resolve(self.corpus, file)  # builds a generated corpus once, on the main process

    def setup(self, stage: str | None = None) -> None:
        for split, files in self.manifests.items():
            if split in self.conversations:
                continue
            conversations = [c for file in files for c in _read(resolve(self.corpus, file))]
            if self.validate == "decode":
                require_decodable(conversation_clips(conversations))
            groups = [
                [c for c in conversations if c.audios],
                [c for c in conversations if not c.audios],
            ]
            self.conversations[split] = groups
            self.lengths[split] = [
                [token_length(c, self.tokenizer, self.max_length) for c in g] for g in groups
            ]
        if self.text_ratio and self.manifests["train"] and not self.conversations["train"][1]:
            raise InputError(
                f"data.text_ratio is {self.text_ratio} but the training files {self.manifests['train']} "
                "hold no pure-text conversation"
            )

    def _loader(self, split: str, shuffle: bool) -> tuple[DataLoader, DurationBucketSampler]:
        ratio = self.text_ratio if split == "train" else None
        sampler = bucket_sampler(
            split,
            self.manifests[split],
            self.lengths[split],
            self.max_tokens,
            weights=None if ratio is None else [1.0 - ratio, ratio],
            num_buckets=self.num_buckets,
            seed=self.seed,
            shuffle=shuffle,
        )
        datasets = [
            ConversationDataset(group, self.tokenizer, self.max_length, self.n_mels)
            for group in self.conversations[split]
        ]
        return batch_loader(
            ConcatDataset(datasets), sampler, self.tokenizer.eod, self.num_workers
        ), sampler

    def train_dataloader(self) -> DataLoader:
        loader, sampler = self._loader("train", shuffle=True)
        self.position.follow(sampler)
        return loader

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)[0]

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)[0]

    def state_dict(self) -> dict:
        """The training sampler's position (:class:`~qwen_audio.data.loaders.TrainingPosition`)."""
        return self.position.state_dict(self.trainer)

    def load_state_dict(self, state: dict) -> None:
        self.position.load_state_dict(state)


def _read(path: str) -> list[Conversation]:
    """The conversations of a file or of a shard folder
    (:func:`~qwen_audio.data.shard.read_conversation_shard`), which give the same batches: a sampler
    picks either by index."""
    return read_conversation_shard(path) if is_shard_folder(path) else read_conversations(path)
