"""Transcription of clips longer than the 30 s the encoder hears, in windows decoded as one batch.

The release truncates such audio to its first 30 s, with our warning (see
:func:`qwen_audio.lengths.audio_lengths`). Here the clip is cut into consecutive, non-overlapping
windows of at most ``window_seconds``. Each cut is placed at the quietest 0.1 s of the last sixth of
its window (the last 5 s of a 30 s window). Cuts thus fall in pauses between words rather than
through them.

Non-overlapping windows need no de-duplication, since every stretch of audio is transcribed exactly
once. All windows are known up front, so they decode together as one batch.

Stitching joins window texts with a space (nothing for Chinese and Japanese). With ``timestamps``,
each window is prompted for word-level timestamps (the SRWT task, times relative to the window). Its
words are then shifted by the window's start, so word times refer to the whole clip.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from qwen_audio.audio import SAMPLE_RATE, load_audio
from qwen_audio.batching import batch_prompts
from qwen_audio.clips import Recording
from qwen_audio.generate import GenerationConfig, answer_prompts
from qwen_audio.lengths import CHUNK_LENGTH, N_SAMPLES
from qwen_audio.model import QwenAudio, last_tokens
from qwen_audio.prompts import (
    Example,
    ExampleBuilder,
    TimedWord,
    encode_task,
    parse_timestamped_words,
)
from qwen_audio.tokenizer import (
    LANGUAGES,
    MODEL_MAX_LENGTH,
    START_OF_TRANSCRIPT,
    Tokenizer,
    timestamp_token,
)

QUIET_FRAME_SECONDS = 0.1  # energy is compared over frames this long, 10 ms apart
CUT_SEARCH_FRACTION = (
    1 / 6
)  # a window may end this fraction of its length early, at its quietest frame
UNSPACED_LANGUAGES = ("zh", "ja")  # written without spaces between words


@dataclass(frozen=True)
class LongTranscript:
    """A long clip's transcript: its whole text, its words, its windows and each window's text.

    ``words`` have times in the clip, and are empty without timestamps. ``windows`` holds the
    ``(start, end)`` seconds of the windows that were decoded.
    """

    text: str
    words: tuple[TimedWord, ...]
    windows: tuple[tuple[float, float], ...]
    window_texts: tuple[str, ...]


def window_bounds(
    waveform: torch.Tensor, window_seconds: float = CHUNK_LENGTH
) -> list[tuple[int, int]]:
    """``(start, stop)`` samples of consecutive windows covering ``waveform``.

    Each window is at most ``window_seconds`` long. Each window is cut at the centre of the quietest
    frame (mean square) in its last ``CUT_SEARCH_FRACTION``.
    """
    if not 1.0 <= window_seconds <= CHUNK_LENGTH:
        raise ValueError(
            f"window_seconds must lie in [1, {CHUNK_LENGTH}] (the encoder hears {CHUNK_LENGTH} s), "
            f"got {window_seconds}"
        )
    window = round(window_seconds * SAMPLE_RATE)
    search = round(window * CUT_SEARCH_FRACTION)
    frame = round(QUIET_FRAME_SECONDS * SAMPLE_RATE)
    hop = SAMPLE_RATE // 100
    bounds = []
    start = 0
    while waveform.numel() - start > window:
        region = waveform[start + window - search : start + window].float()
        energy = F.avg_pool1d(region[None, None] ** 2, frame, hop).flatten()
        cut = start + window - search + int(energy.argmin()) * hop + frame // 2
        bounds.append((start, cut))
        start = cut
    bounds.append((start, waveform.numel()))
    return bounds


def window_prompts(
    tokenizer: Tokenizer, windows: Sequence[torch.Tensor], *, language: str, timestamps: bool
) -> list[Example]:
    """The ASR (or, with ``timestamps``, SRWT) prompt for ``language`` of each window."""
    task = "srwt" if timestamps else "asr"
    return [
        encode_task(tokenizer, task, Recording(window, f"window {index}"), audio_language=language)
        for index, window in enumerate(windows)
    ]


def decode_windows(
    model: QwenAudio,
    tokenizer: Tokenizer,
    windows: list[torch.Tensor],
    *,
    language: str,
    timestamps: bool,
    config: GenerationConfig,
) -> list[list[int]]:
    """Generated ids for each window, all windows in one batch (:func:`window_prompts`)."""
    examples = window_prompts(tokenizer, windows, language=language, timestamps=timestamps)
    return [answer.ids for answer in answer_prompts(model, tokenizer, examples, config)]


@torch.no_grad()
def detect_languages(
    model: QwenAudio, tokenizer: Tokenizer, waveforms: Sequence[torch.Tensor]
) -> list[str]:
    """Detect the spoken language of each waveform (its first 30 s) as Whisper does.

    The answer is the most likely of the language tags after
    ``<audio>…</audio><|startoftranscript|>``. That is where pretraining puts the audio language.
    """
    prompts = []
    for index, waveform in enumerate(waveforms):
        builder = ExampleBuilder(tokenizer)
        builder.add_audio(waveform[:N_SAMPLES], f"clip {index}")
        builder.add(tokenizer.encode(START_OF_TRANSCRIPT, "all"))
        prompts.append(builder.build(MODEL_MAX_LENGTH, "prompt"))
    batch = batch_prompts(prompts, tokenizer.eod).to(next(model.parameters()).device)
    positions = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(
        batch.input_ids,
        audio_mel=batch.audio_mel,
        audio_mel_lengths=batch.audio_mel_lengths,
        attention_mask=batch.attention_mask,
        position_ids=positions,
        logits_at=last_tokens(batch.attention_mask),
    ).logits
    language_ids = [tokenizer.special_id(f"<|{language}|>") for language in LANGUAGES]
    return [LANGUAGES[index] for index in logits[:, language_ids].argmax(-1).tolist()]


def stitch_windows(
    tokenizer: Tokenizer,
    bounds: Sequence[tuple[int, int]],
    outputs: Sequence[list[int]],
    *,
    language: str,
    timestamps: bool,
    name: str,
) -> LongTranscript:
    """One transcript from the generated ids of each window (see the module docstring).

    ``name`` labels warnings.
    """
    separator = "" if language in UNSPACED_LANGUAGES else " "
    texts: list[str] = []
    words: list[TimedWord] = []
    for (start, stop), ids in zip(bounds, outputs):
        offset = start / SAMPLE_RATE
        plain = tokenizer.decode(
            [i for i in ids if i < tokenizer.n_regular]
        ).strip()  # no tags or timestamps
        if not timestamps:
            texts.append(plain)
            continue
        try:  # the SRWT prompt ends with <|0.00|>, so the output starts after it
            window_words = parse_timestamped_words(timestamp_token(0.0) + tokenizer.decode(ids))
        except ValueError as err:
            warnings.warn(
                f"{name}: window {offset:.2f}-{stop / SAMPLE_RATE:.2f} s has no word timestamps ({err})",
                stacklevel=3,
            )
            texts.append(plain)
            continue
        words += [
            TimedWord(w.text.strip(), round(w.start + offset, 2), round(w.end + offset, 2))
            for w in window_words
        ]
        texts.append(separator.join(w.text.strip() for w in window_words))
    text = separator.join(t for t in texts if t)
    windows = tuple((a / SAMPLE_RATE, b / SAMPLE_RATE) for a, b in bounds)
    return LongTranscript(text, tuple(words), windows, tuple(texts))


def transcribe_long(
    model: QwenAudio,
    tokenizer: Tokenizer,
    path: str,
    *,
    language: str,
    timestamps: bool = False,
    window_seconds: float = CHUNK_LENGTH,
    config: GenerationConfig | None = None,
) -> LongTranscript:
    """Transcribe the audio file ``path`` of any length.

    See the module docstring for windows and stitching. ``language`` is the spoken language (``en``,
    ``zh``, ...). ``config`` defaults to the release's evaluation decoding, greedy with a stop at
    ``<|endoftext|>``. A window whose timestamped output cannot be parsed keeps its text and
    contributes no words (with a warning naming it).
    """
    config = config or GenerationConfig.base(tokenizer, do_sample=False)
    waveform = load_audio(path)
    bounds = window_bounds(waveform, window_seconds)
    outputs = decode_windows(
        model,
        tokenizer,
        [waveform[a:b] for a, b in bounds],
        language=language,
        timestamps=timestamps,
        config=config,
    )
    return stitch_windows(
        tokenizer, bounds, outputs, language=language, timestamps=timestamps, name=path
    )
