"""Continuous batching for the server: chat and transcription jobs share one :class:`DecodeEngine`.

A job becomes rows: one for a chat job, one per 30-second window for a transcription. Between two
decoding steps, the waiting rows are prefilled into the free slots (in arrival order) and join the
running batch. A row that ends frees its slot at once. A job whose client left is cancelled and
frees its slots. Greedy, seeded-sampled and transcription rows decode side by side, each with its
own settings. Each gets the tokens it gets alone.

:meth:`Scheduler.step` returns one event per job with news. A chat stream gets ``{"text": piece}``.
The last event is ``{"done": True, ...}`` with the job's result (see :func:`_result`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
from dataclasses import dataclass

import torch

from qwen_audio.audio import SAMPLE_RATE
from qwen_audio.batching import batch_prompts
from qwen_audio.generate import DecodeEngine, GenerationConfig, TextStream
from qwen_audio.longform import detect_languages, stitch_windows, window_bounds, window_prompts
from qwen_audio.model import QwenAudio
from qwen_audio.prompts import Example
from qwen_audio.tokenizer import QwenAudioTokenizer

logger = logging.getLogger("qwen_audio.serve")


@dataclass(frozen=True)
class ChatJob:
    """An encoded chat prompt, how to decode it, and OpenAI's ``stop`` strings."""

    prompt: Example
    config: GenerationConfig
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class TranscriptionJob:
    """A 16 kHz waveform to transcribe in ``language`` (None: detected).

    With word timestamps or not (``timestamps``).
    """

    waveform: torch.Tensor
    language: str | None
    timestamps: bool
    config: GenerationConfig


Job = ChatJob | TranscriptionJob


class _Row:
    """One prompt of a job: its tokens so far, its text stream (chat) and whether it is done."""

    def __init__(
        self, prompt: Example, config: GenerationConfig, text: TextStream | None = None
    ) -> None:
        self.prompt, self.config, self.text = prompt, config, text
        self.ids: list[int] = []
        self.done = False
        self.finish_reason = "stop"
        self.flag: str | None = None
        self.piece = ""  # text not yet handed out
        self.slot: int | None = None

    def push(self, tokens: list[int], finish: str | None, flag: str | None) -> None:
        for token in tokens:
            self.ids.append(token)
            if self.text is not None:
                self.piece += self.text.push(token)
                if self.text.stopped:
                    finish = "stop"
                    break
        if finish is not None:
            self.done, self.flag = True, flag
            self.finish_reason = "length" if finish == "length" else "stop"
            if self.text is not None:
                self.piece += self.text.finish()


class _Active:
    """A job the scheduler holds: its rows, and for a transcription its windows and language."""

    def __init__(
        self, job: Job, rows: list[_Row], bounds=None, language: str | None = None
    ) -> None:
        self.job, self.rows, self.bounds, self.language = job, rows, bounds, language
        self.batch = 0  # the most rows decoding at once while it ran


class Scheduler:
    """Jobs in, events out: ``max_slots`` rows decode at once.

    Each row holds ``max_model_len`` tokens at most.
    """

    def __init__(
        self, model: QwenAudio, tokenizer: QwenAudioTokenizer, *, max_slots: int, max_model_len: int
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.engine = DecodeEngine(
            model, slots=max_slots, max_length=max_model_len, vocab_size=tokenizer.n_vocab
        )
        self.jobs: dict[str, _Active] = {}
        self.waiting: deque[tuple[str, _Row]] = deque()
        self.slot_rows: dict[int, tuple[str, _Row]] = {}

    def add(self, uid: str, job: Job) -> None:
        """Queue ``job``: its rows wait for free slots."""
        if isinstance(job, ChatJob):
            stream = TextStream(
                self.tokenizer, job.stop, strip=True
            )  # chat() strips the response as released
            active = _Active(job, [_Row(job.prompt, self._fit(job.prompt, job.config), stream)])
        else:
            language = job.language
            if language is None:
                (language,) = detect_languages(self.model, self.tokenizer, [job.waveform])
            bounds = window_bounds(job.waveform)
            windows = [job.waveform[a:b] for a, b in bounds]
            prompts = window_prompts(
                self.tokenizer, windows, language=language, timestamps=job.timestamps
            )
            active = _Active(
                job, [_Row(p, self._fit(p, job.config)) for p in prompts], bounds, language
            )
        self.jobs[uid] = active
        self.waiting.extend((uid, row) for row in active.rows)

    def _fit(self, prompt: Example, config: GenerationConfig) -> GenerationConfig:
        """``config`` with at most the new tokens that fit the context after ``prompt``."""
        room = self.engine.max_length - len(prompt.ids)
        if room < 1:
            raise ValueError(
                f"a prompt of {len(prompt.ids)} tokens leaves no room in the context of "
                f"{self.engine.max_length} tokens"
            )
        return dataclasses.replace(
            config,
            max_new_tokens=min(config.max_new_tokens, room),
            min_new_tokens=min(config.min_new_tokens, room),
        )

    def cancel(self, uid: str) -> None:
        """Drop job ``uid`` (its client left).

        Its slots free at once and its waiting rows leave the queue.
        """
        active = self.jobs.pop(uid, None)
        if active is None:
            return
        logger.info(
            "request %s cancelled after %d tokens, %d slots freed",
            uid,
            sum(len(row.ids) for row in active.rows),
            sum(row.slot is not None for row in active.rows),
        )
        for row in active.rows:
            if row.slot is not None:
                self.engine.release(row.slot)
                del self.slot_rows[row.slot]
        self.waiting = deque(item for item in self.waiting if item[0] != uid)

    def has_work(self) -> bool:
        return bool(self.jobs)

    def step(self) -> list[tuple[str, dict]]:
        """Admit waiting rows into free slots and decode one step.

        Returns ``(uid, event)`` for each job with news. A job's last event has ``"done": True``.
        """
        self._admit()
        self.engine.step()
        self.engine.fetch()
        running = len(self.slot_rows)
        for slot, (_, row) in list(self.slot_rows.items()):
            sequence = self.engine.sequences[slot]
            row.push(sequence.tokens[len(row.ids) :], sequence.finish, sequence.flag)
            if row.done:
                self.engine.release(slot)
                del self.slot_rows[slot]
                row.slot = None
        events = []
        for uid, active in list(self.jobs.items()):
            active.batch = max(active.batch, running)
            if all(row.done for row in active.rows):
                del self.jobs[uid]
                events.append((uid, {**_result(self.tokenizer, active), "batch": active.batch}))
            elif isinstance(active.job, ChatJob) and active.rows[0].piece:
                events.append((uid, {"text": active.rows[0].piece}))
                active.rows[0].piece = ""
        return events

    def _admit(self) -> None:
        free = self.engine.free_slots()
        admitted = []
        while free and self.waiting:
            uid, row = self.waiting.popleft()
            row.slot = free.pop(0)
            self.slot_rows[row.slot] = (uid, row)
            admitted.append(row)
        if admitted:
            batch = batch_prompts(
                [row.prompt for row in admitted],
                self.tokenizer.eod,
                self.model.config.encoder.n_mels,
            )
            self.engine.admit(
                [row.slot for row in admitted], batch, [row.config for row in admitted]
            )


def _result(tokenizer: QwenAudioTokenizer, active: _Active) -> dict:
    """The last event of a job.

    For a chat it holds the text left, the finish reason and the token counts. For a transcription
    it holds the transcript. A row the hallucination guard stopped is reported in
    ``"hallucination"``.
    """
    job, rows = active.job, active.rows
    flags = [row.flag for row in rows if row.flag]
    if isinstance(job, ChatJob):
        (row,) = rows
        return {
            "done": True,
            "text": row.piece,
            "finish_reason": row.finish_reason,
            "prompt_tokens": len(row.prompt.ids),
            "completion_tokens": len(row.ids),
            "hallucination": flags[0] if flags else None,
        }
    transcript = stitch_windows(
        tokenizer,
        active.bounds,
        [row.ids for row in rows],
        language=active.language,
        timestamps=job.timestamps,
        name="request",
    )
    return {
        "done": True,
        "text": transcript.text,
        "language": active.language,
        "duration": job.waveform.numel() / SAMPLE_RATE,
        "words": [{"word": w.text, "start": w.start, "end": w.end} for w in transcript.words],
        "segments": [
            {"start": start, "end": end, "text": text}
            for (start, end), text in zip(transcript.windows, transcript.window_texts)
        ],
        "prompt_tokens": sum(len(row.prompt.ids) for row in rows),
        "completion_tokens": sum(len(row.ids) for row in rows),
        "hallucination": flags[0] if flags else None,
    }
