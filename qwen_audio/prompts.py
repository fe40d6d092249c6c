"""Prompt formats as token ids: Qwen-Audio's task tags, SRWT timestamps, and ChatML conversations.

Pretraining (paper §3.2) conditions the decoder on hierarchical tags in a fixed order. The order is:
transcription tag, audio language, task tag, text language, timestamps tag, output instruction. The
target text follows. Only the target (plus the closing ``<|endoftext|>``, where generation stops)
carries loss.

``TASKS`` holds one entry per task of the paper's Table 1. Entries the evaluation scripts of the
release use reproduce those prompts token for token. The others say which released tokens we chose.
Question-answer tasks follow the audio language with ``<|question|>QUESTION<|answer|>`` and no
further tags, as ``evaluate_aqa.py`` does. Some tasks have a label that no released token names
(language, dialect, gender, age, same speaker, singer, title). They are asked with a fixed question.
Thus no two tasks with different outputs share a prompt.

A Qwen2-Audio tokenizer (its ``family``) gets the same tasks as that family's natural-language
instructions instead (:func:`family_prompt`). This holds in training as in evaluation.

Supervised fine-tuning uses ChatML (spec §7) with the family's ``Audio n:<audio>PATH</audio>`` lines
(:data:`AUDIO_LABELS`). The loss covers only what the assistant says.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from qwen_audio.audio import load_audio
from qwen_audio.clips import AudioLoader, Clip, Recording
from qwen_audio.config import Family
from qwen_audio.qwen2_audio.prompts import INSTRUCTIONS, task_instruction
from qwen_audio.tokenizer import (
    AUDIO_END,
    AUDIO_SPECIAL_TOKENS,
    AUDIO_START,
    LANGUAGES,
    MAX_TIMESTAMP_CS,
    MODEL_MAX_LENGTH,
    NO_TIMESTAMPS,
    SILENCE,
    START_OF_ANALYSIS,
    START_OF_TRANSCRIPT,
    TASK_TOKENS,
    TIMESTAMPS,
    AllowedSpecial,
    Tokenizer,
    timestamp_token,
)

IGNORE_INDEX = (
    -100
)  # label of positions without loss (torch.nn.CrossEntropyLoss's default ignore_index)
DEFAULT_SYSTEM = "You are a helpful assistant."
AUDIO_LANGUAGES = (*LANGUAGES, "unknown")
TEXT_LANGUAGES = (*LANGUAGES, "zh_tr")
QUESTION, ANSWER = "<|question|>", "<|answer|>"
MIN_SILENCE = 0.2  # seconds; our choice (the release's SRWT threshold is not published)

_OURS = "ours: the release shows no tag for this task; "
_TIMESTAMP = re.compile(r"<\|(\d+\.\d\d)\|>")
_FINAL_TIMESTAMP = re.compile(_TIMESTAMP.pattern + r"\Z")  # where an SRWT prompt ends
_AUDIO_TAG = re.compile(r"<audio>(.*?)</audio>", re.DOTALL)  # what the release's regex finds


@dataclass(frozen=True)
class Task:
    """Tags of one pretraining task.

    The caller names each language left ``None``. An unnamed text language then defaults to the
    audio language. ``instructions`` lists the allowed output-instruction tokens. The first is the
    default.
    """

    title: str
    start: str
    tag: str
    output: str
    source: str
    audio_language: str | None = None
    text_language: str | None = None
    timestamps: bool = False
    instructions: tuple[str, ...] = ()
    question: str | None = None


def _keyword(title: str, instruction: str, output: str, source: str, **languages: str) -> Task:
    """A label-output task of the ``<|keyword|>`` family, text in English."""
    return Task(
        title,
        START_OF_ANALYSIS,
        "<|keyword|>",
        output,
        source,
        text_language="en",
        instructions=(instruction,),
        **languages,
    )


def _asked(title: str, question: str, output: str, **languages: str) -> Task:
    return Task(
        title,
        START_OF_ANALYSIS,
        QUESTION,
        output,
        _OURS + "released <|question|> ... <|answer|> tags with a fixed question",
        question=question,
        **languages,
    )


TASKS: dict[str, Task] = {
    # speech
    "asr": Task(
        "automatic speech recognition (multilingual)",
        START_OF_TRANSCRIPT,
        "<|transcribe|>",
        "transcript in the audio language; <|wo_itn|> spoken form, <|itn|> written form",
        "eval_audio/evaluate_asr.py (<|wo_itn|>); <|itn|> from the released token list",
        instructions=("<|wo_itn|>", "<|itn|>"),
    ),
    "s2tt": Task(
        "speech-to-text translation",
        START_OF_TRANSCRIPT,
        "<|translate|>",
        "translation into the text language",
        "eval_audio/evaluate_st.py",
        instructions=("<|itn|>",),
    ),
    "osr": Task(
        "overlapped speech recognition",
        START_OF_TRANSCRIPT,
        "<|transcribe|>",
        "one transcript per speaker in order of onset, joined by <|delim|>",
        _OURS + "ASR tags with the released <|delim|> as output instruction",
        instructions=("<|delim|>",),
    ),
    "dialect_asr": Task(
        "dialect speech recognition (Chinese dialects)",
        START_OF_TRANSCRIPT,
        "<|transcribe|>",
        "transcript in standard written Chinese",
        _OURS
        + "the Mandarin ASR tags, since the output format is the same (no dialect token exists)",
        audio_language="zh",
        instructions=("<|wo_itn|>",),
    ),
    "srwt": Task(
        "speech recognition with word-level timestamps (en, zh)",
        START_OF_TRANSCRIPT,
        "<|transcribe|>",
        "words between timestamps (format_timestamped_words); the prompt ends with the first, <|0.00|>",
        "eval_audio/evaluate_srwt.py",
        timestamps=True,
        instructions=("<|0.00|>",),
    ),
    "did": _asked(
        "dialect identification",
        "Which dialect is spoken?",
        "dialect name in English",
        audio_language="zh",
    ),
    "lid": _asked(
        "spoken language identification",
        "Which language is spoken?",
        "language name in English",
        audio_language="unknown",
    ),
    "sgc": _asked(
        "speaker gender classification", "What is the gender of the speaker?", "male | female"
    ),
    "er": _keyword(
        "speech emotion recognition",
        "<|emotion_recognition|>",
        "emotion label, e.g. neutral, joy",
        "eval_audio/evaluate_emotion.py",
    ),
    "sv": _asked(
        "speaker verification (two audios)",
        "Are the two recordings spoken by the same speaker?",
        "yes | no",
    ),
    "sd": Task(
        "speaker diarization",
        START_OF_ANALYSIS,
        "<|keyword|>",
        "speaker labels between timestamps (format_timestamped_words), from <|0.00|>",
        _OURS + "released <|keyword|>, <|timestamps|> and <|speaker_meta|>",
        text_language="en",
        timestamps=True,
        instructions=("<|speaker_meta|>",),
    ),
    "ser": Task(
        "speech entity recognition",
        START_OF_TRANSCRIPT,
        "<|transcribe|>",
        "transcript with each entity as <|startofentityvalue|>value<|endofentityvalue|>"
        "<|startofentitytype|>type<|endofentitytype|>",
        _OURS + "ASR tags with the released <|named_entity_recognition|>",
        instructions=("<|named_entity_recognition|>",),
    ),
    "ks": Task(
        "keyword spotting",
        START_OF_TRANSCRIPT,
        "<|keyword|>",
        "the spoken keyword",
        _OURS + "released <|keyword|> task tag with <|wo_itn|>",
        instructions=("<|wo_itn|>",),
    ),
    "ic": _keyword(
        "intent classification",
        "<|speech_understanding|>",
        "<|scenario|>scenario<|action|>action",
        _OURS + "released spoken-language-understanding tokens",
    ),
    "sf": _keyword(
        "slot filling",
        "<|entities|>",
        "per slot <|startofentitytype|>type<|endofentitytype|><|startofentityvalue|>value"
        "<|endofentityvalue|>",
        _OURS + "released spoken-language-understanding tokens",
    ),
    "sap": _asked(
        "speaker age prediction", "How old is the speaker?", "age group in English, e.g. twenties"
    ),
    "vsc": _keyword(
        "vocal sound classification",
        "<|vocal_classification|>",
        "vocal sound label, e.g. laughter, cough",
        "eval_audio/evaluate_vocal_sound.py",
        audio_language="en",
    ),
    # sound
    "aac": Task(
        "automatic audio captioning",
        START_OF_ANALYSIS,
        "<|caption|>",
        "one caption in the named style",
        "eval_audio/evaluate_caption.py",
        audio_language="unknown",
        text_language="en",
        instructions=("<|caption_clotho|>", "<|caption_audiocaps|>", "<|caption_plain|>"),
    ),
    "sec": _keyword(
        "sound event classification",
        "<|event|>",
        "event labels joined by ', '",
        _OURS + "released <|event|>",
        audio_language="unknown",
    ),
    "asc": _keyword(
        "acoustic scene classification",
        "<|scene|>",
        "scene label",
        "eval_audio/evaluate_scene.py",
        audio_language="unknown",
    ),
    "sed": Task(
        "sound event detection with timestamps",
        START_OF_ANALYSIS,
        "<|keyword|>",
        "per event, in order of onset: <|onset|><|offset|>label (timestamp tokens)",
        _OURS + "released <|event|> with <|timestamps|>",
        audio_language="unknown",
        text_language="en",
        timestamps=True,
        instructions=("<|event|>",),
    ),
    "aqa": Task(
        "audio question answering",
        START_OF_ANALYSIS,
        QUESTION,
        "short answer",
        "eval_audio/evaluate_aqa.py",
        audio_language="en",
    ),
    # music and song
    "sid": _asked(
        "singer identification", "Who is the singer?", "singer name", audio_language="unknown"
    ),
    "smer": _keyword(
        "singer and music emotion recognition",
        "<|emotion_recognition|>",
        "emotion label",
        _OURS + "released <|emotion_recognition|> on non-speech audio",
        audio_language="unknown",
    ),
    "mc": Task(
        "music captioning",
        START_OF_ANALYSIS,
        "<|caption|>",
        "free-text description of the music",
        _OURS + "released <|caption|> with <|music_description|>",
        audio_language="unknown",
        text_language="en",
        instructions=("<|music_description|>",),
    ),
    "mic": _keyword(
        "musical instrument classification",
        "<|instrument|>",
        "instrument name",
        _OURS + "released <|instrument|>",
        audio_language="unknown",
    ),
    "mna": _keyword(
        "music note analysis",
        "<|note_analysis|>",
        "<|pitch|><|midi_pitch_N|><|velocity|><|midi_velocity_N|><|instrument|>name<|sonic|>q1, q2",
        "eval_audio/evaluate_note_analysis.py",
        audio_language="unknown",
    ),
    "mgr": _keyword(
        "music genre recognition",
        "<|song_meta|>",
        "genre name",
        _OURS + "released <|song_meta|>",
        audio_language="unknown",
    ),
    "mr": _asked(
        "music recognition", "What is the title of this music?", "title", audio_language="unknown"
    ),
    "mqa": Task(
        "music question answering",
        START_OF_ANALYSIS,
        QUESTION,
        "short answer",
        _OURS + "the AQA tags of evaluate_aqa.py",
        audio_language="en",
    ),
}


def _check_language(field: str, language: str | None, allowed: tuple[str, ...], task: str) -> str:
    if language is None:
        raise ValueError(f"task {task!r} needs {field} (one of {', '.join(allowed)})")
    if language not in allowed:
        raise ValueError(f"{field} {language!r} is not one of {', '.join(allowed)}")
    return language


def task_prompt(
    task: str,
    *,
    audio_language: str | None = None,
    text_language: str | None = None,
    instruction: str | None = None,
    question: str | None = None,
) -> str:
    """The tag text that follows ``</audio>``, validated against the registry.

    For example, ``task_prompt("asr", audio_language="en")`` ==
    ``"<|startoftranscript|><|en|><|transcribe|><|en|><|notimestamps|><|wo_itn|>"``
    (evaluate_asr.py).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}")
    spec = TASKS[task]
    audio_language = _check_language(
        "audio_language", audio_language or spec.audio_language, AUDIO_LANGUAGES, task
    )
    tags = f"{spec.start}<|{audio_language}|>{spec.tag}"
    if spec.tag == QUESTION:
        if instruction is not None or text_language is not None:
            raise ValueError(
                f"task {task!r} is asked as a question and takes no instruction or text_language"
            )
        question = question or spec.question
        if not question:
            raise ValueError(
                f"task {task!r} needs question (the text between <|question|> and <|answer|>)"
            )
        return f"{tags}{question}{ANSWER}"
    if question is not None:
        raise ValueError(f"task {task!r} takes no question")
    if text_language is None and spec.tag == "<|translate|>":
        raise ValueError(f"task {task!r} needs text_language (the language to translate into)")
    text_language = text_language or spec.text_language or audio_language
    text_language = _check_language("text_language", text_language, TEXT_LANGUAGES, task)
    instruction = instruction or spec.instructions[0]
    if instruction not in spec.instructions:
        raise ValueError(
            f"instruction {instruction!r} is not one of task {task!r}'s: {', '.join(spec.instructions)}"
        )
    timestamps = TIMESTAMPS if spec.timestamps else NO_TIMESTAMPS
    return f"{tags}<|{text_language}|>{timestamps}{instruction}"


def family_prompt(
    family: Family,
    task: str,
    *,
    audio_language: str | None = None,
    text_language: str | None = None,
    instruction: str | None = None,
    question: str | None = None,
) -> str:
    """The text after the audio that asks ``task`` in the words ``family`` was pretrained on.

    This is the one place where the families differ. Qwen-Audio gets its tags (:func:`task_prompt`).
    Qwen2-Audio gets its natural-language instruction
    (:func:`~qwen_audio.qwen2_audio.prompts.task_instruction`). The instruction text stands for
    Qwen-Audio's output-instruction tag too, so Qwen2-Audio reads no ``instruction``. Training
    (:func:`encode_task`) and evaluation (``Benchmark.prompt``) both ask through here. A model is
    thus evaluated on the prompts it learned.
    """
    if family == "qwen2-audio":
        return task_instruction(
            task, audio_language=audio_language, text_language=text_language, question=question
        )
    return task_prompt(
        task,
        audio_language=audio_language,
        text_language=text_language,
        instruction=instruction,
        question=question,
    )


def family_tasks(family: Family) -> Mapping[str, object]:
    """The tasks :func:`family_prompt` can ask ``family``.

    The manifest readers refuse any other task at its line. They do so before training starts, not
    when its example is first built.
    """
    return INSTRUCTIONS if family == "qwen2-audio" else TASKS


@dataclass(frozen=True)
class Example:
    """Token ids, their labels (``IGNORE_INDEX`` where no loss) and the clips of the audio spans."""

    ids: list[int]
    labels: list[int]
    clips: tuple[Clip, ...]

    @property
    def waveforms(self) -> tuple[torch.Tensor, ...]:
        return tuple(clip.waveform for clip in self.clips)

    @property
    def loss_mask(self) -> list[bool]:
        return [label != IGNORE_INDEX for label in self.labels]


def split_audio_tags(text: str) -> list[str]:
    """Raw text cut at its ``<audio>PATH</audio>`` tags: ``[text, path, text, ..., path, text]``.

    Even items are text and odd items the paths between the tags, as the release's regex finds
    them. A tag without its partner raises ValueError. Only raw text is parsed: the CLI, chat, eval
    prompts and SFT files.
    """
    pieces = _AUDIO_TAG.split(text)
    for piece in pieces[::2]:
        if AUDIO_END in piece:
            raise ValueError(f"{AUDIO_END} in {piece[:80]!r} has no opening {AUDIO_START}")
        if AUDIO_START in piece:
            raise ValueError(f"{AUDIO_START} in {piece[:80]!r} is never closed by {AUDIO_END}")
    return pieces


AudioItem = str | Recording  # a path for the builder's loader, or a waveform already in hand


class ExampleBuilder:
    """Collects the pieces of an example in order (ids, text, clips) for :meth:`build` to tokenize.

    Tokenizing in one place keeps labels and clip spans aligned with the ids. ``load`` decodes the
    paths that raw text names. Each path is decoded once per example.
    """

    def __init__(self, tokenizer: Tokenizer, load: AudioLoader = load_audio) -> None:
        self.tokenizer = tokenizer
        self.load = load.__getitem__ if isinstance(load, Mapping) else functools.cache(load)
        self.pieces: list[tuple[Sequence[int] | str | Recording, AllowedSpecial | None, bool]] = []
        self.audios = 0

    def add(self, ids: Sequence[int], *, learn: bool = False) -> None:
        """Add token ids, learned (labelled) or not."""
        self.pieces.append((list(ids), None, learn))

    def add_audio(self, waveform: torch.Tensor, source: str) -> None:
        """Add a clip: the family's markers around the placeholders its length rule counts."""
        waveform = torch.as_tensor(waveform)
        if waveform.dim() != 1:
            raise ValueError(
                f"audio {source}: expected a 1-D mono waveform, got shape {tuple(waveform.shape)}"
            )
        self.pieces.append((Recording(waveform, source), None, False))
        self.audios += 1

    def add_item(self, audio: AudioItem) -> None:
        """Add a recording, or the audio ``load`` decodes from a path."""
        if isinstance(audio, Recording):
            self.add_audio(audio.waveform, audio.source)
        else:
            self.add_audio(self.load(audio), audio)

    def add_text(self, text: str, allowed_special: AllowedSpecial, *, learn: bool = False) -> None:
        """Add text, with the special tokens ``allowed_special`` names. Audio tags stay text."""
        self.pieces.append((text, allowed_special, learn))

    def add_raw_text(self, text: str, allowed_special: AllowedSpecial) -> None:
        """Add raw text: each ``<audio>PATH</audio>`` becomes the clip ``load`` decodes.

        The text between tags is encoded piece by piece. The markers are special tokens, which end
        a piece of encoding anyway, so the ids equal those of the whole text with its tags.
        """
        for index, piece in enumerate(split_audio_tags(text)):
            if index % 2:
                self.add_item(piece)
            else:
                self.add_text(piece, allowed_special)

    def build(self, max_length: int, field: str) -> Example:
        """Tokenize the pieces into the :class:`Example`.

        More than ``max_length`` ids raise ValueError naming ``field``.
        """
        tokenizer = self.tokenizer
        ids: list[int] = []
        labels: list[int] = []
        clips: list[Clip] = []
        for piece, allowed_special, learn in self.pieces:
            if isinstance(piece, Recording):
                lengths = tokenizer.audio_lengths(piece.waveform.shape[-1], piece.source)
                stop = len(ids) + lengths.span_tokens
                clips.append(Clip(piece.source, len(ids), stop, lengths.mel_frames, piece.waveform))
                pads = [tokenizer.audio_pad] * lengths.audio_tokens
                piece = [tokenizer.audio_start, *pads, tokenizer.audio_end]
            elif isinstance(piece, str):
                piece = tokenizer.encode(piece, allowed_special)
            ids.extend(piece)
            labels.extend(piece if learn else [IGNORE_INDEX] * len(piece))
        if len(ids) > max_length:
            raise ValueError(
                f"{field}: the example is {len(ids)} tokens long, more than max_length {max_length}"
            )
        return Example(ids, labels, tuple(clips))


def encode_text(
    tokenizer: Tokenizer,
    text: str,
    *,
    allowed_special: AllowedSpecial = "all",
    load: AudioLoader = load_audio,
    max_length: int = MODEL_MAX_LENGTH,
) -> Example:
    """A raw release-style prompt (tags as text, ``<audio>PATH</audio>`` spans) as an Example.

    By default every special-token text is the token, as in the release.
    """
    builder = ExampleBuilder(tokenizer, load)
    builder.add_raw_text(text, allowed_special)
    return builder.build(max_length, "prompt")


def encode_task(
    tokenizer: Tokenizer,
    task: str,
    audio: AudioItem | Sequence[AudioItem],
    target: str | None = None,
    *,
    audio_language: str | None = None,
    text_language: str | None = None,
    instruction: str | None = None,
    question: str | None = None,
    load: AudioLoader = load_audio,
    max_length: int = MODEL_MAX_LENGTH,
) -> Example:
    """One clip per ``audio`` item + the task's prompt [+ target + the end-of-text token].

    The result is an Example. The prompt is in the family's words (:func:`family_prompt`). ``load``
    decodes a path item. A :class:`Recording` is kept.

    Without ``target`` this is the prompt for generation. It holds the ids evaluation gives the same
    item: the text of ``Benchmark.prompt`` with its task-token texts encoded as the tokens. With
    ``target``, only the target and the closing end-of-text token carry loss.

    When the prompt ends with a timestamp (SRWT), the target must start with that timestamp. That
    timestamp is a Qwen-Audio timestamp token, or the same text in Qwen2-Audio's instruction (that
    tokenizer has no timestamp tokens). The sequence holds it once, in the prompt, where generation
    finds it. Target text may contain the task tokens (timestamps, entity marks, MIDI notes...) but
    no audio.
    """
    items = [audio] if isinstance(audio, (str, Recording)) else list(audio)
    prompt = family_prompt(
        tokenizer.family,
        task,
        audio_language=audio_language,
        text_language=text_language,
        instruction=instruction,
        question=question,
    )
    builder = ExampleBuilder(tokenizer, load)
    for item in items:
        builder.add_item(item)
    builder.add_text(prompt, TASK_TOKENS)
    if target is not None:
        held = _FINAL_TIMESTAMP.search(prompt)
        if held:
            if not target.startswith(held.group()):
                raise ValueError(
                    f"target of task {task!r} must start with {held.group()}, the prompt's last timestamp"
                )
            target = target[len(held.group()) :]
        builder.add_text(target, TASK_TOKENS, learn=True)
        builder.add([tokenizer.eod], learn=True)
    return builder.build(max_length, "target")


@dataclass(frozen=True)
class TimedWord:
    """A word (or any unit: speaker label, event) and the times it starts and ends, in seconds."""

    text: str
    start: float
    end: float


def format_timestamped_words(
    words: Sequence[TimedWord], *, duration: float | None = None, min_silence: float = MIN_SILENCE
) -> str:
    """The release's SRWT target: units between shared timestamps.

    For example: ``<|0.00|><|sil|><|0.54|>面<|0.86|>条<|1.17|>``.

    Times are rounded to 0.01 s. An end beyond 30 s is clipped to 30.00, since the model hears the
    first 30 s. A gap of more than ``min_silence`` seconds before a word becomes a ``<|sil|>`` unit.
    With ``duration``, so does such a gap after the last word. A shorter gap joins the word that
    follows it. With n units there are n + 1 timestamps, the first 0.00.
    """
    tokens = [timestamp_token(0.0)]
    previous_end = 0
    silence = round(min_silence * 100)

    def add_unit(text: str, start: int, end: int) -> None:
        if start - previous_end > silence:
            tokens.extend([SILENCE, timestamp_token(start / 100)])
        tokens.extend([text, timestamp_token(end / 100)])

    for index, word in enumerate(words):
        if not word.text or "<|" in word.text or "|>" in word.text:
            raise ValueError(
                f"words[{index}].text {word.text!r} must be non-empty text without '<|' or '|>'"
            )
        if not (math.isfinite(word.start) and math.isfinite(word.end)) or word.start < 0:
            raise ValueError(
                f"words[{index}] times ({word.start}, {word.end}) must be finite and >= 0"
            )
        if word.end < word.start:
            raise ValueError(f"words[{index}].end {word.end} is before its start {word.start}")
        if index and word.start < words[index - 1].end:
            raise ValueError(
                f"words[{index}].start {word.start} is before words[{index - 1}].end "
                f"{words[index - 1].end}: words must be ordered and must not overlap"
            )
        start = round(word.start * 100)
        if start >= MAX_TIMESTAMP_CS:
            raise ValueError(
                f"words[{index}].start {word.start} s lies beyond the 30 s the model hears"
            )
        end = min(round(word.end * 100), MAX_TIMESTAMP_CS)
        add_unit(word.text, start, end)
        previous_end = end
    if duration is not None:
        end = min(round(duration * 100), MAX_TIMESTAMP_CS)
        if end < previous_end:
            raise ValueError(
                f"duration {duration} s ends before the last word ({previous_end / 100:.2f} s)"
            )
        if end - previous_end > silence:
            tokens.extend([SILENCE, timestamp_token(end / 100)])
    return "".join(tokens)


def task_target(
    task: str, text: str, words: Sequence[TimedWord] | None = None, duration: float | None = None
) -> str:
    """What the model learns to emit for ``task``.

    A timestamped task (SRWT) with word times gets its words between timestamps
    (:func:`format_timestamped_words`). Every other task gets ``text``.
    """
    if TASKS[task].timestamps and words is not None:
        return format_timestamped_words(words, duration=duration)
    return text


def parse_timestamped_words(text: str) -> list[TimedWord]:
    """Inverse of :func:`format_timestamped_words`: the words with their times.

    ``<|sil|>`` units are dropped.
    """
    pieces = _TIMESTAMP.split(text.strip())  # [before, t0, unit, t1, unit, ..., tn, after]
    if len(pieces) < 3 or pieces[0] or pieces[-1]:
        raise ValueError(
            f"timestamped text must start and end with a timestamp like <|0.00|>: {text!r}"
        )
    times = [float(t) for t in pieces[1::2]]
    for index, time in enumerate(times):
        if time > MAX_TIMESTAMP_CS / 100 or (index and time < times[index - 1]):
            raise ValueError(
                f"timestamp <|{time:.2f}|> (number {index}) is beyond 30 s or before the one before it"
            )
    words = []
    for index, unit in enumerate(pieces[2:-1:2]):
        if not unit:
            raise ValueError(f"two timestamps in a row at <|{times[index]:.2f}|> in {text!r}")
        if unit != SILENCE:
            words.append(TimedWord(unit, times[index], times[index + 1]))
    return words


@dataclass(frozen=True)
class Message:
    """One ChatML turn: text, or items ``{"audio": path or Recording}`` and ``{"text": ...}``."""

    role: str
    content: str | Sequence[Mapping[str, AudioItem]]


@dataclass(frozen=True)
class AudioLabels:
    """How a family's chat turns name their audios (the paper's "Audio id:" convention, §3.3).

    Each audio is written as ``Audio {n}:``, then ``separator``, then the audio and a newline. With
    ``per_message``, ``n`` restarts at 1 in every message. Otherwise it counts on over the whole
    conversation.
    """

    separator: str
    per_message: bool


AUDIO_LABELS: dict[Family, AudioLabels] = {
    # Qwen-Audio's from_list_format (tokenization_qwen.py): "Audio 1:<audio>a.wav</audio>\n", per
    # call
    "qwen-audio": AudioLabels(separator="", per_message=True),
    # Qwen2AudioProcessor's chat template: "Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\n", one
    # count per chat
    "qwen2-audio": AudioLabels(separator=" ", per_message=False),
}


def list_pieces(
    items: Sequence[Mapping[str, AudioItem]], family: Family = "qwen-audio", audios_before: int = 0
) -> list[str | AudioItem]:
    """A user turn's items as ``[text, audio, text, ..., audio, text]``.

    Each audio is labelled as ``family`` labels it (:data:`AUDIO_LABELS`). Text items stay as they
    are. ``audios_before`` counts the audios of earlier turns. A family that numbers audios across
    the conversation counts on from it. Qwen-Audio's release restarts at ``Audio 1:`` each message.
    """
    labels = AUDIO_LABELS[family]
    pieces: list[str | AudioItem] = [""]
    audios = 0 if labels.per_message else audios_before
    for index, item in enumerate(items):
        if "audio" in item:
            audios += 1
            pieces[-1] += f"Audio {audios}:{labels.separator}"
            pieces += [item["audio"], "\n"]
        elif "text" in item:
            pieces[-1] += item["text"]
        else:
            raise ValueError(
                f"items[{index}] must have an 'audio' or a 'text' key, got {sorted(item)}"
            )
    return pieces


def from_list_format(
    items: Sequence[Mapping[str, str]], family: Family = "qwen-audio", audios_before: int = 0
) -> str:
    """A user turn's items as text (:func:`list_pieces`), each audio as ``<audio>PATH</audio>``."""
    pieces = list_pieces(items, family, audios_before)
    return "".join(
        f"{AUDIO_START}{piece}{AUDIO_END}" if index % 2 else piece
        for index, piece in enumerate(pieces)
    )


def encode_chat(
    tokenizer: Tokenizer,
    messages: Sequence[Message],
    *,
    add_generation_prompt: bool = False,
    load: AudioLoader = load_audio,
    max_length: int = MODEL_MAX_LENGTH,
) -> Example:
    """ChatML ids as the release's ``make_context`` builds them.

    The loss is on each assistant content + ``<|im_end|>``.

    The ids open with ``<|im_start|>system\\n{system}<|im_end|>``. The system prompt is the default
    unless ``messages`` starts with one. Each turn then adds
    ``\\n<|im_start|>{role}\\n{content}<|im_end|>``. Role and content are encoded separately. The
    content may hold the release's audio-task special tokens (e.g. timestamps).
    ``add_generation_prompt`` appends ``\\n<|im_start|>assistant\\n`` for generation.

    Item lists are written with the labels of the tokenizer's family (:func:`list_pieces`). For
    Qwen2-Audio the ids are its processor's chat template's. That template only adds a newline after
    the last turn.
    """
    has_system = bool(messages) and messages[0].role == "system"
    builder = ExampleBuilder(tokenizer, load)
    newline = tokenizer.encode("\n")
    builder.add([tokenizer.im_start, *tokenizer.encode("system"), *newline])
    if has_system:
        _add_content(builder, messages[0])
    else:
        builder.add_raw_text(DEFAULT_SYSTEM, AUDIO_SPECIAL_TOKENS)
    builder.add([tokenizer.im_end])
    for index in range(int(has_system), len(messages)):
        message = messages[index]
        expected = ("user", "assistant")[(index - has_system) % 2]
        if message.role != expected:
            raise ValueError(
                f"messages[{index}].role is {message.role!r}; expected {expected!r} (turns alternate "
                "user/assistant after an optional leading system message)"
            )
        if message.role == "assistant" and not isinstance(message.content, str):
            raise ValueError(f"messages[{index}].content: assistant turns are text, not item lists")
        builder.add([*newline, tokenizer.im_start, *tokenizer.encode(message.role), *newline])
        if message.role == "user":
            _add_content(builder, message)
            builder.add([tokenizer.im_end])
        else:
            if AUDIO_START in message.content:
                raise ValueError(f"messages[{index}].content: assistant turns cannot hold audio")
            builder.add_text(message.content, AUDIO_SPECIAL_TOKENS, learn=True)
            builder.add([tokenizer.im_end], learn=True)
    if add_generation_prompt:
        if len(messages) == has_system or messages[-1].role != "user":
            raise ValueError("add_generation_prompt needs the last message to be the user's")
        builder.add([*newline, tokenizer.im_start, *tokenizer.encode("assistant"), *newline])
    return builder.build(max_length, "messages")


def _add_content(builder: ExampleBuilder, message: Message) -> None:
    """Add a system or user turn: raw text, or items written with the family's audio labels."""
    if isinstance(message.content, str):
        builder.add_raw_text(message.content, AUDIO_SPECIAL_TOKENS)
        return
    pieces = list_pieces(message.content, builder.tokenizer.family, builder.audios)
    for number, piece in enumerate(pieces):
        if number % 2:
            builder.add_item(piece)
        else:
            builder.add_raw_text(piece, AUDIO_SPECIAL_TOKENS)
