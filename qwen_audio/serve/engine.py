"""The inference side of the server: one dynamic batch of chat and transcription jobs, decoded exactly.

Requests batched together by LitServe may ask for different decoding. Rows share one generation only when their
:class:`GenerationConfig` is the same up to ``max_new_tokens`` (each row stops at its own limit), so a greedy row
gets the tokens it gets alone (batched generation is exact, :mod:`qwen_audio.generate`). A seeded sampled row
decodes alone, so that its seed gives the same sample whatever arrives with it. The groups advance one step each
in turn, so every stream moves while the others decode.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from qwen_audio.audio import SAMPLE_RATE
from qwen_audio.generate import GenerationConfig, TextStream, generate_prompts
from qwen_audio.longform import detect_languages, stitch_windows, window_bounds, window_prompts
from qwen_audio.model import QwenAudio
from qwen_audio.prompts import Example
from qwen_audio.tokenizer import QwenAudioTokenizer


@dataclass(frozen=True)
class ChatJob:
    """An encoded chat prompt, how to decode it, and OpenAI's ``stop`` strings."""

    prompt: Example
    config: GenerationConfig
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class TranscriptionJob:
    """A 16 kHz waveform to transcribe in ``language`` (None: detected), with word timestamps or not."""

    waveform: torch.Tensor
    language: str | None
    timestamps: bool
    config: GenerationConfig


Job = ChatJob | TranscriptionJob


class _Row:
    """One prompt of a group: its tokens so far and whether it is done."""

    def __init__(self, prompt: Example, limit: int, text: TextStream | None = None) -> None:
        self.prompt, self.limit, self.text = prompt, limit, text
        self.ids: list[int] = []
        self.done = False
        self.finish_reason = "stop"
        self.piece = ""  # text not yet handed out

    def push(self, token: int | None) -> None:
        if token is None:
            self.done = True
        else:
            self.ids.append(token)
            if self.text is not None:
                self.piece += self.text.push(token)
            if self.text is not None and self.text.stopped:
                self.done = True
            elif len(self.ids) == self.limit:
                self.done, self.finish_reason = True, "length"
        if self.done and self.text is not None:
            self.piece += self.text.finish()


def _group_key(index: int, config: GenerationConfig) -> tuple:
    shared = dataclasses.replace(config, max_new_tokens=1)
    return (shared, index) if config.do_sample and config.seed is not None else (shared,)


def run_batch(model: QwenAudio, tokenizer: QwenAudioTokenizer, jobs: Sequence[Job]) -> Iterator[list[dict]]:
    """Decode ``jobs`` together; yield, step after step, one event per job: ``{}`` (no news), ``{"text": piece}``,
    and last ``{"done": True, "batch": len(jobs), ...}`` with the job's result (see :func:`_result`)."""
    rows: list[list[_Row]] = [[] for _ in jobs]
    bounds: dict[int, list[tuple[int, int]]] = {}
    languages: dict[int, str] = {}
    undetected = [i for i, job in enumerate(jobs) if isinstance(job, TranscriptionJob) and job.language is None]
    if undetected:
        found = detect_languages(model, tokenizer, [jobs[i].waveform for i in undetected])
        languages.update(zip(undetected, found))
    for index, job in enumerate(jobs):
        if isinstance(job, ChatJob):
            stream = TextStream(tokenizer, job.stop, strip=True)  # chat() strips the response as released
            rows[index].append(_Row(job.prompt, job.config.max_new_tokens, stream))
            continue
        languages.setdefault(index, job.language)
        bounds[index] = window_bounds(job.waveform)
        windows = [job.waveform[a:b] for a, b in bounds[index]]
        prompts = window_prompts(tokenizer, windows, language=languages[index], timestamps=job.timestamps)
        rows[index] += [_Row(prompt, job.config.max_new_tokens) for prompt in prompts]

    groups: dict[tuple, list[_Row]] = {}
    for index, job in enumerate(jobs):
        groups.setdefault(_group_key(index, job.config), []).extend(rows[index])
    running = []
    for (config, *_), members in groups.items():
        limit = max(row.limit for row in members)
        config = dataclasses.replace(config, max_new_tokens=limit)
        running.append((generate_prompts(model, tokenizer, [row.prompt for row in members], config), members))
    reported = [False] * len(jobs)
    while running:
        for steps, members in list(running):
            step = next(steps, None)
            for row, token in zip(members, step or [None] * len(members)):
                if not row.done:
                    row.push(token)
            if all(row.done for row in members):
                steps.close()
                running.remove((steps, members))
        events = []
        for index, job in enumerate(jobs):
            if reported[index]:
                events.append({})
            elif all(row.done for row in rows[index]):
                reported[index] = True
                result = _result(tokenizer, job, rows[index], bounds.get(index), languages.get(index))
                events.append({**result, "batch": len(jobs)})
            elif isinstance(job, ChatJob) and rows[index][0].piece:
                events.append({"text": rows[index][0].piece})
                rows[index][0].piece = ""
            else:
                events.append({})
        yield events


def _result(tokenizer: QwenAudioTokenizer, job: Job, rows: list[_Row], bounds, language) -> dict:
    """The last event of a job: the chat text left, finish reason and token counts; or the transcript."""
    if isinstance(job, ChatJob):
        (row,) = rows
        return {"done": True, "text": row.piece, "finish_reason": row.finish_reason,
                "prompt_tokens": len(row.prompt.ids), "completion_tokens": len(row.ids)}
    transcript = stitch_windows(tokenizer, bounds, [row.ids for row in rows], language=language,
                                timestamps=job.timestamps, name="request")
    return {"done": True, "text": transcript.text, "language": language,
            "duration": job.waveform.numel() / SAMPLE_RATE,
            "words": [{"word": w.text, "start": w.start, "end": w.end} for w in transcript.words],
            "segments": [{"start": start, "end": end, "text": text}
                         for (start, end), text in zip(transcript.windows, transcript.window_texts)],
            "prompt_tokens": sum(len(row.prompt.ids) for row in rows),
            "completion_tokens": sum(len(row.ids) for row in rows)}
