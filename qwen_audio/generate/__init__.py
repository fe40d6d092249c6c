"""Batched generation with the KV cache: greedy or sampled, stop tokens, streaming, and answers as text.

Prompts of different lengths are left-padded and their rotary positions are taken from the attention mask, so a
batch gives exactly the tokens each prompt gives alone (the release counts the padding, see spec §3). The audio is
encoded and spliced once, at prefill, which computes the head at each row's last token only; decoding steps feed
only the new token. Logits are shaped by transformers' logits processors in the order its ``generate`` applies them
(repetition penalty, minimum length, temperature, top-k, top-p), on fp32 scores as it does. :func:`answer_prompts`
is the one way from prompts to answers that the command line (:mod:`qwen_audio.generate.__main__`), chat, long-form,
evaluation and the experiments share.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch

from qwen_audio.batching import PromptBatch, batch_prompts, encode_prompts
from qwen_audio.model import QwenAudio, last_tokens
from qwen_audio.prompts import Example
from qwen_audio.tokenizer import MODEL_MAX_LENGTH, Tokenizer

if TYPE_CHECKING:
    from transformers.generation.logits_process import LogitsProcessorList

Streamer = Callable[[list[int | None]], None]


@dataclass(frozen=True)
class GenerationConfig:
    """How to pick each new token. ``stop_ids`` end a row's generation and are not returned.

    Sampling options apply only with ``do_sample``; 0 / 1.0 switch top-k / top-p off. ``seed`` makes sampling
    reproducible (a ``torch.Generator`` of its own, the global RNG is left alone).
    """

    max_new_tokens: int = 512
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    stop_ids: tuple[int, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(f"min_new_tokens must lie in [0, max_new_tokens={self.max_new_tokens}], "
                             f"got {self.min_new_tokens}")
        if not 0 < self.temperature < float("inf"):
            raise ValueError(f"temperature must be a positive finite number, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1] (1 = off), got {self.top_p}")
        if not 0 < self.repetition_penalty < float("inf"):
            raise ValueError(f"repetition_penalty must be a positive finite number (1 = off), got "
                             f"{self.repetition_penalty}")
        if any(not isinstance(i, int) or i < 0 for i in self.stop_ids):
            raise ValueError(f"stop_ids must be non-negative token ids, got {self.stop_ids!r}")
        if self.seed is not None and self.seed < 0:
            raise ValueError(f"seed must be >= 0 or None, got {self.seed}")

    @classmethod
    def base(cls, tokenizer: Tokenizer, **overrides) -> GenerationConfig:
        """The release's ``base_generation_config.json`` (Qwen-Audio): sampling with top-p 0.8, stop at eod.

        Its evaluation scripts decode greedily instead: ``GenerationConfig.base(tokenizer, do_sample=False)``.
        """
        release = cls(max_new_tokens=512, do_sample=True, top_k=0, top_p=0.8, stop_ids=tokenizer.stop_ids)
        return dataclasses.replace(release, **overrides)

    @classmethod
    def chat(cls, tokenizer: Tokenizer, **overrides) -> GenerationConfig:
        """The release's ``chat_generation_config.json`` (Qwen-Audio-Chat): sampling with top-p 0.5, stop at
        ``<|im_end|>`` or ``<|im_start|>`` (its stop words) or eod (its eos)."""
        stops = (tokenizer.im_end, tokenizer.im_start, tokenizer.eod)
        release = cls(max_new_tokens=512, do_sample=True, top_k=0, top_p=0.5, stop_ids=stops)
        return dataclasses.replace(release, **overrides)

    def logits_processor(self, prompt_length: int) -> LogitsProcessorList:
        """Score transforms for ``(ids so far [B, prompt_length + step], fp32 scores [B, vocab])``, as
        transformers applies them; greedy decoding uses the repetition penalty and the minimum length only.

        As in the release (transformers' ``generate``), the repetition penalty counts every prompt token as seen,
        audio placeholders included; only left padding (given as id ``vocab``) is left out.
        """
        from transformers.generation.logits_process import (  # transformers takes seconds to import: not for --help
            LogitsProcessorList,
            MinNewTokensLengthLogitsProcessor,
            RepetitionPenaltyLogitsProcessor,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        processors = LogitsProcessorList()
        if self.repetition_penalty != 1.0:
            processors.append(RepetitionPenaltyLogitsProcessor(self.repetition_penalty))
        if self.min_new_tokens > 0 and self.stop_ids:
            processors.append(MinNewTokensLengthLogitsProcessor(prompt_length, self.min_new_tokens,
                                                                list(self.stop_ids)))
        if self.do_sample:
            if self.temperature != 1.0:
                processors.append(TemperatureLogitsWarper(self.temperature))
            if self.top_k > 0:
                processors.append(TopKLogitsWarper(self.top_k))
            if self.top_p < 1.0:
                processors.append(TopPLogitsWarper(self.top_p))
        return processors


@torch.no_grad()
def generate_steps(
    model: QwenAudio,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    config: GenerationConfig,
    *,
    vocab_size: int,
    audio_mel: torch.Tensor | None = None,
    audio_mel_lengths: torch.Tensor | None = None,
) -> Iterator[list[int | None]]:
    """Yield, at each decoding step, every row's new token, or None for a row that has stopped (a stop token is
    never yielded). Stops after ``max_new_tokens`` steps or when every row has stopped.

    Only the tokenizer's ``vocab_size`` ids are candidates: the embedding is padded beyond them (155947 rows for
    155165 tokens in the release) and those rows are no tokens.
    """
    if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} "
                         "must both be [batch, length]")
    empty = (attention_mask.sum(-1) == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"prompt rows {empty} hold no tokens (attention_mask all 0)")
    if not 0 < vocab_size <= model.config.decoder.vocab_size:
        raise ValueError(f"vocab_size {vocab_size} must lie in [1, {model.config.decoder.vocab_size}] "
                         "(the model's embedding rows)")
    device = input_ids.device
    processor = config.logits_processor(input_ids.shape[1])
    generator = None
    if config.do_sample and config.seed is not None:
        generator = torch.Generator(device).manual_seed(config.seed)
    # What the repetition penalty sees: padding becomes vocab_size, an id transformers' processor ignores.
    history = input_ids.masked_fill(attention_mask == 0, vocab_size)
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    output = model(input_ids, audio_mel=audio_mel, audio_mel_lengths=audio_mel_lengths,
                   attention_mask=attention_mask, position_ids=positions, use_cache=True,
                   logits_at=last_tokens(attention_mask))
    stops = torch.tensor(config.stop_ids, dtype=torch.long, device=device)
    finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=device)
    next_position = positions[:, -1:] + 1
    for step in range(config.max_new_tokens):
        logits = output.logits.flatten(0, -2)  # [B, vocab]: one position per row, at prefill and at each step
        scores = processor(history, logits[:, :vocab_size].float())
        if config.do_sample:
            token = torch.multinomial(scores.softmax(-1), 1, generator=generator).squeeze(1)
        else:
            token = scores.argmax(-1)
        finished |= torch.isin(token, stops)
        yield [None if done else t for t, done in zip(token.tolist(), finished.tolist())]
        if finished.all() or step + 1 == config.max_new_tokens:
            return
        history = torch.cat([history, token[:, None]], dim=1)
        attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=1)
        output = model(token[:, None], attention_mask=attention_mask, position_ids=next_position,
                       kv_cache=output.kv_cache, use_cache=True)
        next_position = next_position + 1


def generate(
    model: QwenAudio,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    config: GenerationConfig,
    *,
    vocab_size: int,
    audio_mel: torch.Tensor | None = None,
    audio_mel_lengths: torch.Tensor | None = None,
    streamer: Streamer | None = None,
) -> list[list[int]]:
    """The new tokens of each left-padded prompt, stop token excluded; ``streamer`` sees every step's tokens
    (None for rows that have stopped). See :func:`generate_steps`."""
    generated: list[list[int]] = [[] for _ in range(input_ids.shape[0])]
    for step in generate_steps(model, input_ids, attention_mask, config, vocab_size=vocab_size,
                               audio_mel=audio_mel, audio_mel_lengths=audio_mel_lengths):
        for row, token in enumerate(step):
            if token is not None:
                generated[row].append(token)
        if streamer is not None:
            streamer(step)
    return generated


def generate_prompts(model: QwenAudio, tokenizer: Tokenizer, prompts: Sequence[Example],
                     config: GenerationConfig) -> Iterator[list[int | None]]:
    """:func:`generate_steps` for encoded prompts, batched on the model's device (the server streams these)."""
    batch = batch_prompts(prompts, tokenizer.eod, model.config.encoder.n_mels).to(next(model.parameters()).device)
    return generate_steps(model, batch.input_ids, batch.attention_mask, config, vocab_size=tokenizer.n_vocab,
                          audio_mel=batch.audio_mel, audio_mel_lengths=batch.audio_mel_lengths)


class Answer(NamedTuple):
    """What a prompt got: the generated ids (stop token excluded) and their text, decoded and stripped."""

    ids: list[int]
    text: str


def answer_batch(model: QwenAudio, tokenizer: Tokenizer, batch: PromptBatch,
                 config: GenerationConfig) -> list[Answer]:
    """The :class:`Answer` of each row of an already batched (and placed) prompt batch."""
    outputs = generate(model, batch.input_ids, batch.attention_mask, config, vocab_size=tokenizer.n_vocab,
                       audio_mel=batch.audio_mel, audio_mel_lengths=batch.audio_mel_lengths)
    return [Answer(ids, tokenizer.decode(ids).strip()) for ids in outputs]


def answer_prompts(model: QwenAudio, tokenizer: Tokenizer, prompts: Sequence[Example],
                   config: GenerationConfig, batch_size: int | None = None) -> list[Answer]:
    """The :class:`Answer` of each encoded prompt, ``batch_size`` prompts at a time (default: all at once) on the
    model's device; a batch gives each prompt the tokens it gets alone."""
    size = batch_size or max(1, len(prompts))
    device = next(model.parameters()).device
    answers: list[Answer] = []
    for first in range(0, len(prompts), size):
        batch = batch_prompts(prompts[first:first + size], tokenizer.eod, model.config.encoder.n_mels).to(device)
        answers += answer_batch(model, tokenizer, batch, config)
    return answers


class TextStream:
    """The text of a growing token sequence, handed out in pieces as its tokens arrive.

    A character split over several byte-level tokens is held back until complete (the decoded text would end in
    U+FFFD). The text ends before the first of the ``stop`` strings (OpenAI's ``stop``), and text that may be the
    start of one is held back until it is known not to be. With ``strip``, leading and trailing whitespace are held
    back too. The pieces therefore join to exactly the final :attr:`text`.
    """

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] = (), strip: bool = False) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.strip = strip
        self.tokens: list[int] = []
        self.stopped = False  # a stop string was found
        self._shown = ""

    def push(self, token: int) -> str:
        """Add one generated token; the new piece of text (maybe empty)."""
        self.tokens.append(token)
        full = self.tokenizer.decode(self.tokens)
        if full.endswith("\ufffd"):
            return ""
        return self._show(full, final=False)

    def finish(self) -> str:
        """The rest of the text once generation has ended."""
        return self._show(self.tokenizer.decode(self.tokens), final=True)

    @property
    def text(self) -> str:
        return self._shown

    def _show(self, full: str, final: bool) -> str:
        if self.stopped:
            return ""
        cuts = [index for index in (full.find(s) for s in self.stop) if index >= 0]
        if cuts:
            self.stopped, visible = True, full[:min(cuts)]
        elif final or not self.stop:
            visible = full
        else:
            visible = full[:max(0, len(full) - max(len(s) for s in self.stop) + 1)]
        if self.strip:
            visible = visible.strip() if final or self.stopped else visible.lstrip().rstrip()
        piece = visible[len(self._shown):]
        self._shown = visible
        return piece


def stream_text(model: QwenAudio, tokenizer: Tokenizer, prompt: str, config: GenerationConfig,
                max_length: int = MODEL_MAX_LENGTH) -> Iterator[str]:
    """The continuation of one raw prompt as text pieces, yielded as they are decoded (see :class:`TextStream`);
    the pieces join to exactly ``tokenizer.decode(generated ids)``."""
    batch = encode_prompts(tokenizer, [prompt], max_length, model.config.encoder.n_mels)
    batch = batch.to(next(model.parameters()).device)
    stream = TextStream(tokenizer)
    for (token,) in generate_steps(model, batch.input_ids, batch.attention_mask, config, vocab_size=tokenizer.n_vocab,
                                   audio_mel=batch.audio_mel, audio_mel_lengths=batch.audio_mel_lengths):
        if token is None:
            break
        piece = stream.push(token)
        if piece:
            yield piece
    piece = stream.finish()
    if piece:
        yield piece


