"""Manifest entries -> model examples: decode, resample, log-mel, tag prompt with audio placeholders, labels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from qwen_audio.audio import (
    N_FFT, N_SAMPLES, SAMPLE_RATE, audio_lengths, conv_frames, load_audio, log_mel_spectrogram, pad_or_trim,
)
from qwen_audio.data.manifest import ManifestEntry
from qwen_audio.prompts import QUESTION, TASKS, Example, TimedWord, encode_task, format_timestamped_words
from qwen_audio.tokenizer import QwenAudioTokenizer


@dataclass
class Sample:
    """One training example: token ids and labels, and per audio its mel ``[n_mels, frames]`` and valid length."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    mels: list[torch.Tensor]
    mel_lengths: list[int]
    task: str


def load_segment(entry: ManifestEntry) -> torch.Tensor:
    """The entry's audio at 16 kHz, cut to its ``offset``/``duration`` segment."""
    audio = load_audio(entry.audio)
    start = round(entry.offset * SAMPLE_RATE)
    stop = None if entry.duration is None else start + round(entry.duration * SAMPLE_RATE)
    return audio[start:stop]


def audio_features(waveform: torch.Tensor, source: str, n_mels: int = 80,
                   mel_frames: int | None = None) -> tuple[torch.Tensor, int]:
    """The release's encoder input for one clip: log-mel of the clip zero-padded to 30 s, kept up to the
    ``2 * encoder_frames + 1`` frames an encoder may read (``AudioEncoderConfig.mel_lookahead``), and the valid mel
    length: ``mel_frames`` (the prompt's :class:`~qwen_audio.tokenizer.AudioSpan` has it), else ``samples // 160``.

    Only ``2 * N_FFT`` samples of the zero padding are transformed, not all 30 s: every kept frame's window ends
    before that, so it reads the same samples, and the frames dropped are all-zero ones at the log floor, which
    never hold the example's maximum. A 2 s clip costs a fifteenth of the 30 s transform.
    """
    lengths = audio_lengths(waveform.numel(), source=source)
    if mel_frames is None:
        mel_frames = lengths.mel_frames
    mel = log_mel_spectrogram(pad_or_trim(waveform, min(N_SAMPLES, lengths.samples + 2 * N_FFT)), n_mels)
    return mel[:, : 2 * conv_frames(mel_frames) + 1], mel_frames


def target_text(entry: ManifestEntry) -> str:
    """What the model learns to emit: SRWT tasks get words between timestamps, other tasks the entry's text."""
    if TASKS[entry.task].timestamps and entry.words is not None:
        words = [TimedWord(w.word, w.start, w.end) for w in entry.words]
        return format_timestamped_words(words, duration=entry.duration)
    return entry.text


def task_example(tokenizer: QwenAudioTokenizer, entry: ManifestEntry, target: str | None = None,
                 max_length: int = 2048) -> Example:
    """The entry's hierarchical-tag prompt (+ ``target``, learned, when given) with its audio segment decoded."""
    asked = TASKS[entry.task].tag == QUESTION  # the question replaces the text-language and instruction tags
    return encode_task(
        tokenizer, entry.task, entry.audio, target, audio_language=entry.audio_language,
        text_language=None if asked else entry.text_language, question=entry.question,
        load={entry.audio: load_segment(entry)}, max_length=max_length,
    )


def to_sample(example: Example, task: str, n_mels: int = 80) -> Sample:
    """Tensors of an encoded example and the encoder input of each of its audios."""
    features = [audio_features(w, span.source, n_mels, span.mel_frames) for w, span in zip(example.waveforms, example.audios)]
    return Sample(
        torch.tensor(example.ids), torch.tensor(example.labels),
        [mel for mel, _ in features], [length for _, length in features], task,
    )


def encode_entry(entry: ManifestEntry, tokenizer: QwenAudioTokenizer, max_length: int = 2048, n_mels: int = 80) -> Sample:
    """Decode the entry's audio and build its training example: tag prompt, target, labels and mel features."""
    return to_sample(task_example(tokenizer, entry, target_text(entry), max_length), entry.task, n_mels)


class AudioTextDataset(Dataset):
    """Map-style dataset over manifest entries; the loss covers only the target after the task tags."""

    def __init__(self, entries: Sequence[ManifestEntry], tokenizer: QwenAudioTokenizer, max_length: int = 2048,
                 n_mels: int = 80) -> None:
        self.entries, self.tokenizer, self.max_length, self.n_mels = entries, tokenizer, max_length, n_mels

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> Sample:
        return encode_entry(self.entries[index], self.tokenizer, self.max_length, self.n_mels)
