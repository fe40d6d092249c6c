"""The decode engine: sequences in the slots of one static KV cache, decoded together, joining and
leaving freely.

Admission (:meth:`DecodeEngine.admit`) prefills new prompts into free slots. A step
(:meth:`DecodeEngine.step`) feeds every running slot its last token and picks the next one, all on
the device. The cache is written in place (:class:`~qwen_audio.modules.decoder.KVCache`). Tokens
are picked by :class:`SlotSampler`, and stop tokens are detected there too. The host learns the
tokens when it asks (:meth:`DecodeEngine.fetch`): every step when it streams, every few steps
otherwise. A row's tokens depend only on its own prompt, settings and seed. Slots never see each
other, so a row gets the tokens it gets alone, whatever joins or leaves the batch.

On CUDA, :meth:`DecodeEngine.capture` records the decoding step's forward as one CUDA graph per
batch-size bucket (reading the whole cache). A step then costs one graph launch instead of hundreds
of kernel launches. Elsewhere the same step runs eagerly, reading only the cache positions that are
in use.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from qwen_audio.batching import PromptBatch
from qwen_audio.generate.config import GenerationConfig
from qwen_audio.generate.sampling import SlotSampler
from qwen_audio.model import QwenAudio, last_tokens
from qwen_audio.modules.decoder import KVCache

MEL_FRAMES_PER_SECOND = 100  # 16 kHz audio, hop 160
LONGEST_REPEATED_NGRAM = 8


@dataclass
class SlotSequence:
    """One slot's sequence as the host knows it: its tokens so far and, once known, why it ended.

    ``finish``: ``"stop"`` (a stop token, not kept), ``"length"`` (``max_new_tokens``) or
    ``"guard"`` (the hallucination guard: ``flag`` says which check).
    """

    limit: int
    length: int  # tokens in the cache
    max_repeats: int
    audio_limit: int | None
    picked: int = 1  # tokens picked on the device, fetched or not
    tokens: list[int] = field(default_factory=list)
    finish: str | None = None
    flag: str | None = None

    def push(self, token: int, stopped: bool) -> None:
        if self.finish is not None:
            return
        if stopped:
            self.finish = "stop"
            return
        self.tokens.append(token)
        if self.audio_limit is not None and len(self.tokens) > self.audio_limit:
            self.tokens.pop()
            self.finish, self.flag = "guard", "longer than its audio can hold"
        elif self.max_repeats and _repeats(self.tokens, self.max_repeats):
            self.finish, self.flag = "guard", "repetition"
        elif len(self.tokens) == self.limit:
            self.finish = "length"


def _repeats(tokens: list[int], max_repeats: int) -> bool:
    """Whether ``tokens`` end with one n-gram (n <= 8) repeated more than ``max_repeats`` times."""
    times = max_repeats + 1
    for n in range(1, LONGEST_REPEATED_NGRAM + 1):
        if len(tokens) >= n * times and tokens[-n * times :] == tokens[-n:] * times:
            return True
    return False


class DecodeEngine:
    """``slots`` sequences of at most ``max_length`` tokens (prompt included).

    Their tokens are picked over ``vocab_size`` candidate ids.
    """

    def __init__(self, model: QwenAudio, *, slots: int, max_length: int, vocab_size: int) -> None:
        if not 0 < vocab_size <= model.config.decoder.vocab_size:
            raise ValueError(
                f"vocab_size {vocab_size} must lie in [1, {model.config.decoder.vocab_size}] "
                "(the model's embedding rows)"
            )
        weight = next(model.parameters())
        self.model, self.vocab_size, self.device = model, vocab_size, weight.device
        self.cache = KVCache.allocate(
            model.config.decoder, slots, max_length, device=weight.device, dtype=weight.dtype
        )
        self.sampler = SlotSampler(slots, vocab_size, weight.device)
        self.next_tokens = torch.zeros(slots, dtype=torch.long, device=weight.device)
        self.sequences: list[SlotSequence | None] = [None] * slots
        self._pending: list[tuple[list[SlotSequence], torch.Tensor, torch.Tensor]] = []
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    @property
    def slots(self) -> int:
        return len(self.sequences)

    @property
    def max_length(self) -> int:
        return self.cache.max_length

    def free_slots(self) -> list[int]:
        return [slot for slot, sequence in enumerate(self.sequences) if sequence is None]

    @torch.no_grad()
    def admit(
        self, slots: Sequence[int], batch: PromptBatch, configs: Sequence[GenerationConfig]
    ) -> None:
        """Prefill the left-padded ``batch`` into free ``slots`` (one row each).

        Then pick each row's first token.
        """
        lengths = batch.attention_mask.sum(-1).tolist()
        for row, (length, config) in enumerate(zip(lengths, configs)):
            if length == 0:
                raise ValueError(f"prompt rows [{row}] hold no tokens (attention_mask all 0)")
            if length + config.max_new_tokens > self.max_length:
                raise ValueError(
                    f"prompt row {row}: {length} prompt tokens + max_new_tokens "
                    f"{config.max_new_tokens} exceed the engine's max_length {self.max_length}"
                )
        busy = [slot for slot in slots if self.sequences[slot] is not None]
        if busy:
            raise ValueError(f"slots {busy} are in use")
        batch = batch.to(self.device)
        rows = torch.tensor(list(slots), device=self.device)
        self.cache.reset(rows)
        positions = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
        output = self.model(
            batch.input_ids,
            audio_mel=batch.audio_mel,
            audio_mel_lengths=batch.audio_mel_lengths,
            attention_mask=batch.attention_mask,
            position_ids=positions,
            kv_cache=self.cache,
            cache_slots=rows,
            key_length=batch.input_ids.shape[1],
            logits_at=last_tokens(batch.attention_mask),
        )
        seen = batch.input_ids.masked_fill(batch.attention_mask == 0, self.vocab_size)
        seconds = self._audio_seconds(batch)
        for row, (slot, config) in enumerate(zip(slots, configs)):
            self.sampler.set(slot, config, seen[row])
            audio_limit = None
            if config.max_tokens_per_audio_second and seconds[row]:
                audio_limit = math.ceil(config.max_tokens_per_audio_second * seconds[row])
            self.sequences[slot] = SlotSequence(
                config.max_new_tokens, lengths[row], config.max_repeats, audio_limit
            )
        tokens = self.sampler.pick(output.logits[:, : self.vocab_size].float(), list(slots))
        stopped = self.sampler.advance(tokens, list(slots))
        self.next_tokens[rows] = tokens
        self._pending.append(([self.sequences[slot] for slot in slots], tokens, stopped))

    def _audio_seconds(self, batch: PromptBatch) -> list[float]:
        """Seconds of audio in each row's prompt (its clips come in row-major order)."""
        rows = batch.input_ids.shape[0]
        if batch.audio_mel_lengths is None:
            return [0.0] * rows
        clips = (batch.input_ids == self.model.config.audio_start_id).sum(-1).tolist()
        frames = batch.audio_mel_lengths.tolist()
        seconds, first = [], 0
        for count in clips:
            seconds.append(sum(frames[first : first + count]) / MEL_FRAMES_PER_SECOND)
            first += count
        return seconds

    def running(self) -> list[int]:
        """The slots that still decode: not known to have finished and below their token limit."""
        return [
            slot
            for slot, sequence in enumerate(self.sequences)
            if sequence is not None and sequence.finish is None and sequence.picked < sequence.limit
        ]

    @torch.no_grad()
    def step(self) -> None:
        """One decoding step for every running slot, without waiting for the device."""
        running = self.running()
        if not running:
            return
        rows = running[-1] + 1
        logits = self._forward(rows, max(self.sequences[slot].length for slot in running) + 1)
        tokens = self.sampler.pick(logits, list(range(rows)))
        stopped = self.sampler.advance(tokens, list(range(rows)))
        self.next_tokens[:rows] = tokens
        for slot in running:
            self.sequences[slot].length += 1
            self.sequences[slot].picked += 1
        self._pending.append(
            (
                [self.sequences[slot] if slot in running else None for slot in range(rows)],
                tokens,
                stopped,
            )
        )

    def _forward(self, rows: int, key_length: int) -> torch.Tensor:
        """fp32 logits ``[rows, vocab]`` of slots ``0..rows-1`` fed their next token."""
        bucket = next((size for size in sorted(self._graphs) if size >= rows), None)
        if bucket is not None:
            graph, logits = self._graphs[bucket]
            graph.replay()
            return logits[:rows]
        output = self.model(
            self.next_tokens[:rows, None], kv_cache=self.cache, key_length=key_length
        )
        return output.logits[:, 0, : self.vocab_size].float()

    def fetch(self) -> None:
        """Bring the tokens picked since the last fetch to the host (one sync).

        Then record which rows ended.
        """
        pending, self._pending = self._pending, []
        for sequences, tokens, stopped in pending:
            for sequence, token, stop in zip(sequences, tokens.tolist(), stopped.tolist()):
                if sequence is not None:
                    sequence.push(token, stop)

    def release(self, slot: int) -> None:
        """Free ``slot`` at once (its sequence ended, or its client left)."""
        self.sequences[slot] = None
        self.sampler.clear(slot)
        self.cache.reset(torch.tensor([slot], device=self.device))

    def capture(self, buckets: Sequence[int] = (1, 2, 4, 8, 16, 32, 64, 128)) -> None:
        """Record the decoding step's forward as a CUDA graph per batch-size bucket up to ``slots``.

        Call it with every slot free, e.g. at load, because the warm-up runs write into the
        cache."""
        if self.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA model, this one is on {self.device}")
        sizes = sorted({min(size, self.slots) for size in buckets})
        lengths, alpha = self.cache.lengths.clone(), self.cache.ntk_alpha.clone()
        pool = None
        for size in sizes:

            def forward(size: int = size) -> torch.Tensor:
                output = self.model(self.next_tokens[:size, None], kv_cache=self.cache)
                return output.logits[:, 0, : self.vocab_size].float()

            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream), torch.no_grad():
                for _ in range(2):
                    forward()
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool), torch.no_grad():
                logits = forward()
            pool = graph.pool()
            self._graphs[size] = (graph, logits)
            self.cache.lengths.copy_(lengths)
            self.cache.ntk_alpha.copy_(alpha)
