"""Batched generation with the KV cache: greedy or sampled, stop tokens, streaming, answers as text.

Prompts of different lengths are left-padded. Their rotary positions are taken from the attention
mask. A batch thus gives exactly the tokens each prompt gives alone (the release counts the padding,
see spec §3). The audio is encoded and spliced once, at prefill. Prefill computes the head at each
row's last token only. Decoding steps feed only the new token into a static KV cache
(:mod:`.engine`). Each token is picked on the device by :mod:`.sampling`. It runs transformers'
logits processors on fp32 scores, in the order transformers' ``generate`` applies them.

:func:`answer_prompts` is the one way from prompts to answers. The command line
(:mod:`qwen_audio.generate.__main__`), chat, long-form, evaluation and the experiments share it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import torch

from qwen_audio.batching import PromptBatch, batch_prompts, encode_prompts
from qwen_audio.generate.config import GenerationConfig
from qwen_audio.generate.engine import DecodeEngine
from qwen_audio.model import QwenAudio
from qwen_audio.prompts import Example
from qwen_audio.tokenizer import MODEL_MAX_LENGTH, Tokenizer

__all__ = [
    "Answer",
    "DecodeEngine",
    "GenerationConfig",
    "TextStream",
    "answer_batch",
    "answer_prompts",
    "generate",
    "generate_prompts",
    "generate_steps",
    "stream_text",
]

Streamer = Callable[[list[int | None]], None]


SYNC_EVERY = 8  # decoding steps between two host syncs when nothing streams


def generate_steps(
    model: QwenAudio,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    config: GenerationConfig,
    *,
    vocab_size: int,
    audio_mel: torch.Tensor | None = None,
    audio_mel_lengths: torch.Tensor | None = None,
    sync_every: int = 1,
    flags: list[str | None] | None = None,
) -> Iterator[list[int | None]]:
    """Yield every row's new token at each decoding step, or None for a row that has stopped.

    A stop token is never yielded. Stops after ``max_new_tokens`` steps or when every row has
    stopped. The host waits for the device every ``sync_every`` steps, then yields those steps at
    once. ``flags``, when given, receives each row's hallucination-guard flag (None: not stopped by
    the guard).

    Only the tokenizer's ``vocab_size`` ids are candidates. The embedding is padded beyond them
    (155947 rows for 155165 tokens in the release), and those rows are no tokens.
    """
    if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} "
            "must both be [batch, length]"
        )
    empty = (attention_mask.sum(-1) == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"prompt rows {empty} hold no tokens (attention_mask all 0)")
    rows = input_ids.shape[0]
    engine = DecodeEngine(
        model,
        slots=rows,
        max_length=input_ids.shape[1] + config.max_new_tokens,
        vocab_size=vocab_size,
    )
    engine.admit(
        range(rows),
        PromptBatch(input_ids, attention_mask, audio_mel, audio_mel_lengths),
        [config] * rows,
    )
    sequences = list(engine.sequences)
    yielded = 0
    while True:
        engine.fetch()
        for slot, sequence in enumerate(engine.sequences):
            if sequence is not None and sequence.finish:
                engine.release(slot)
        known = max(len(seq.tokens) + (seq.finish == "stop") for seq in sequences)
        for step in range(yielded, known):
            yield [seq.tokens[step] if step < len(seq.tokens) else None for seq in sequences]
        yielded = known
        if all(seq.finish for seq in sequences):
            if flags is not None:
                flags[:] = [seq.flag for seq in sequences]
            return
        for _ in range(sync_every):
            engine.step()


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
    flags: list[str | None] | None = None,
) -> list[list[int]]:
    """The new tokens of each left-padded prompt, stop token excluded.

    ``streamer`` sees every step's tokens (None for rows that have stopped). See
    :func:`generate_steps`. Without a streamer the host waits for the device every
    :data:`SYNC_EVERY` steps only.
    """
    generated: list[list[int]] = [[] for _ in range(input_ids.shape[0])]
    for step in generate_steps(
        model,
        input_ids,
        attention_mask,
        config,
        vocab_size=vocab_size,
        audio_mel=audio_mel,
        audio_mel_lengths=audio_mel_lengths,
        sync_every=1 if streamer else SYNC_EVERY,
        flags=flags,
    ):
        for row, token in enumerate(step):
            if token is not None:
                generated[row].append(token)
        if streamer is not None:
            streamer(step)
    return generated


def generate_prompts(
    model: QwenAudio, tokenizer: Tokenizer, prompts: Sequence[Example], config: GenerationConfig
) -> Iterator[list[int | None]]:
    """:func:`generate_steps` for encoded prompts, batched on the model's device.

    The server streams these.
    """
    batch = batch_prompts(prompts, tokenizer.eod, model.config.encoder.n_mels).to(
        next(model.parameters()).device
    )
    return generate_steps(
        model,
        batch.input_ids,
        batch.attention_mask,
        config,
        vocab_size=tokenizer.n_vocab,
        audio_mel=batch.audio_mel,
        audio_mel_lengths=batch.audio_mel_lengths,
    )


class Answer(NamedTuple):
    """What a prompt got: the generated ids, their text, and the hallucination guard's flag.

    The ids exclude the stop token. The text is decoded and stripped. The flag is set when the guard
    stopped the row (see :class:`GenerationConfig`).
    """

    ids: list[int]
    text: str
    flag: str | None = None


def answer_batch(
    model: QwenAudio, tokenizer: Tokenizer, batch: PromptBatch, config: GenerationConfig
) -> list[Answer]:
    """The :class:`Answer` of each row of an already batched (and placed) prompt batch."""
    flags: list[str | None] = []
    outputs = generate(
        model,
        batch.input_ids,
        batch.attention_mask,
        config,
        vocab_size=tokenizer.n_vocab,
        audio_mel=batch.audio_mel,
        audio_mel_lengths=batch.audio_mel_lengths,
        flags=flags,
    )
    return [Answer(ids, tokenizer.decode(ids).strip(), flag) for ids, flag in zip(outputs, flags)]


def answer_prompts(
    model: QwenAudio,
    tokenizer: Tokenizer,
    prompts: Sequence[Example],
    config: GenerationConfig,
    batch_size: int | None = None,
) -> list[Answer]:
    """The :class:`Answer` of each encoded prompt, computed on the model's device.

    Prompts go ``batch_size`` at a time (default: all at once). A batch gives each prompt the tokens
    it gets alone.
    """
    size = batch_size or max(1, len(prompts))
    device = next(model.parameters()).device
    answers: list[Answer] = []
    for first in range(0, len(prompts), size):
        batch = batch_prompts(
            prompts[first : first + size], tokenizer.eod, model.config.encoder.n_mels
        ).to(device)
        answers += answer_batch(model, tokenizer, batch, config)
    return answers


class TextStream:
    """The text of a growing token sequence, handed out in pieces as its tokens arrive.

    A character split over several byte-level tokens is held back until complete (the decoded text
    would end in U+FFFD). The text ends before the first of the ``stop`` strings (OpenAI's
    ``stop``). Text that may be the start of one is held back until it is known not to be. With
    ``strip``, leading and trailing whitespace are held back too. The pieces therefore join to
    exactly the final :attr:`text`.
    """

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] = (), strip: bool = False) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.strip = strip
        self.tokens: list[int] = []
        self.stopped = False  # a stop string was found
        self._shown = ""

    def push(self, token: int) -> str:
        """Add one generated token and return the new piece of text (maybe empty)."""
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
            self.stopped, visible = True, full[: min(cuts)]
        elif final or not self.stop:
            visible = full
        else:
            visible = full[: max(0, len(full) - max(len(s) for s in self.stop) + 1)]
        if self.strip:
            visible = visible.strip() if final or self.stopped else visible.lstrip().rstrip()
        piece = visible[len(self._shown) :]
        self._shown = visible
        return piece


def stream_text(
    model: QwenAudio,
    tokenizer: Tokenizer,
    prompt: str,
    config: GenerationConfig,
    max_length: int = MODEL_MAX_LENGTH,
) -> Iterator[str]:
    """The continuation of one raw prompt as text pieces, yielded as they are decoded.

    The pieces join to exactly ``tokenizer.decode(generated ids)`` (see :class:`TextStream`).
    """
    batch = encode_prompts(tokenizer, [prompt], max_length, model.config.encoder.n_mels)
    batch = batch.to(next(model.parameters()).device)
    stream = TextStream(tokenizer)
    for (token,) in generate_steps(
        model,
        batch.input_ids,
        batch.attention_mask,
        config,
        vocab_size=tokenizer.n_vocab,
        audio_mel=batch.audio_mel,
        audio_mel_lengths=batch.audio_mel_lengths,
    ):
        if token is None:
            break
        piece = stream.push(token)
        if piece:
            yield piece
    piece = stream.finish()
    if piece:
        yield piece
