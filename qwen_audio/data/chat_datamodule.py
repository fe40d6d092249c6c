"""LightningDataModule for SFT: conversation JSONL (or the demo chat data) -> token-bucketed, resumable loaders that
mix conversations with audio and pure-text conversations at a set ratio."""

from __future__ import annotations

from functools import partial
from typing import Literal

from torch.utils.data import ConcatDataset, DataLoader

from qwen_audio.data.check import conversation_clips, require_decodable
from qwen_audio.data.collate import collate
from qwen_audio.data.conversations import Conversation, ConversationDataset, read_conversations, token_length
from qwen_audio.data.datamodule import DEMO_PREFIX, AudioTextDataModule
from qwen_audio.data.demo import build_demo_chat
from qwen_audio.data.sampler import DurationBucketSampler
from qwen_audio.errors import InputError


class ChatDataModule(AudioTextDataModule):
    """Train/validation/test loaders over conversation JSONL files (:mod:`qwen_audio.data.conversations`).

    Batching reuses :class:`DurationBucketSampler` with each conversation's *token count* as its length and
    ``max_tokens`` as the budget: in stage 2 the encoder is frozen and small beside the LLM, whose memory grows with
    the padded tokens (``batch size * longest conversation``), so SFT buckets by tokens rather than audio seconds.
    Conversations with audio and pure-text ones are the sampler's two groups and ``text_ratio`` sets their weights;
    resuming mid-epoch works as in :class:`AudioTextDataModule`, whose loaders and state this class inherits.

    Args:
        train, val, test: conversation files; ``demo:<split>`` names the demo chat data
            (:func:`qwen_audio.data.demo.chat.build_demo_chat`), built on first use.
        text_ratio: the share of pure-text conversations in each training epoch, which keeps the total size
            (``None``: every conversation once per epoch).
        max_tokens: padded tokens per batch; at least ``max_length``, so that any conversation fits in a batch.
        max_length: the longest conversation allowed, in tokens with audio placeholders; a longer one is an error
            naming its file and line.
        demo_size: training clips per group of the demo corpus.
        validate: ``decode`` also decodes every clip before step 0 (see :class:`AudioTextDataModule`).
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
        demo_size: int = 48,
        validate: Literal["header", "decode"] = "header",
    ) -> None:
        super().__init__(train, val, test, max_length=max_length, num_buckets=num_buckets,
                         num_workers=num_workers, seed=seed, demo_size=demo_size, validate=validate)
        if text_ratio is not None and not 0.0 <= text_ratio <= 1.0:
            raise InputError(f"data.text_ratio must lie in [0, 1], got {text_ratio}")
        if max_tokens < max_length:
            raise InputError(f"data.max_tokens ({max_tokens}) must be at least data.max_length ({max_length})")
        self.text_ratio, self.max_tokens = text_ratio, max_tokens
        self.conversations: dict[str, list[list[Conversation]]] = {}  # split -> [with audio, pure text]
        self.lengths: dict[str, list[list[int]]] = {}

    def _resolve(self, manifest: str) -> str:
        if manifest.startswith(DEMO_PREFIX):
            return str(build_demo_chat(seed=self.seed, size=self.demo_size)[manifest[len(DEMO_PREFIX):]])
        return manifest

    def setup(self, stage: str | None = None) -> None:
        for split, files in self.manifests.items():
            if split in self.conversations:
                continue
            conversations = [c for file in files for c in read_conversations(self._resolve(file))]
            if self.validate == "decode":
                require_decodable(conversation_clips(conversations))
            groups = [[c for c in conversations if c.audios], [c for c in conversations if not c.audios]]
            self.conversations[split] = groups
            self.lengths[split] = [[token_length(c, self.tokenizer, self.max_length) for c in g] for g in groups]
        if self.text_ratio and self.manifests["train"] and not self.conversations["train"][1]:
            raise InputError(f"data.text_ratio is {self.text_ratio} but the training files {self.manifests['train']} "
                             "hold no pure-text conversation")

    def _loader(self, split: str, shuffle: bool) -> tuple[DataLoader, DurationBucketSampler]:
        ratio = self.text_ratio if split == "train" else None
        sampler = self._sampler(split, self.lengths[split], self.max_tokens,
                                None if ratio is None else [1.0 - ratio, ratio], shuffle)
        datasets = [ConversationDataset(group, self.tokenizer, self.max_length, self.n_mels)
                    for group in self.conversations[split]]
        loader = DataLoader(
            ConcatDataset(datasets), batch_sampler=sampler, num_workers=self.num_workers,
            collate_fn=partial(collate, pad_id=self.tokenizer.eod), persistent_workers=self.num_workers > 0,
        )
        return loader, sampler
