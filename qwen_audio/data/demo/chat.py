"""Chat data for the SFT demo, generated from the demo corpus: questions and answers on its audio.

Every answer is one the audio determines (:mod:`qwen_audio.data.demo.corpus`). The questions ask
what is said (ASR lines), which note (MNA), which scene (ASC), how many beeps or clicks (AQA), and
which of two clips is speech. Some conversations go on with a follow-up (the language, the
instrument, what the speech clip says). A few pure-text conversations (greetings, sums) stand in for
the paper's text instruction data. Each split's file is written round-robin over these kinds. The
first conversations of a file thus show one of each.

The files live next to the corpus (``chat-<version>-<split>.jsonl``, audio paths relative to it).
They are derived from ``seed`` alone. Each is written to a temporary file renamed into place, so
concurrent builders agree.
"""

from __future__ import annotations

import itertools
import os
import random
import tempfile
from pathlib import Path

from qwen_audio.data.conversations import Conversation, write_conversations
from qwen_audio.data.demo.corpus import NUMBER_WORDS, SPLITS, build_demo_corpus
from qwen_audio.data.manifest import ManifestEntry, read_manifest
from qwen_audio.prompts import Message

CHAT_VERSION = "1"  # bump when generation changes
NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
LANGUAGE_NAMES = {"en": "English", "zh": "Mandarin Chinese"}
SCENE_ANSWERS = {
    "rain": "rain falling",
    "wind": "wind blowing",
    "engine": "an engine running",
    "birds": "birds singing",
    "babble": "a crowd of people talking",
}
TRANSCRIBE_QUESTIONS = (
    "What is said in the audio?",
    "What does the speaker say?",
    "Transcribe the audio.",
)
GREETINGS = (
    ("Hello!", "Hello! Give me an audio clip and ask me about it."),
    ("What can you do?", "I can transcribe speech, name notes and scenes, and count sounds."),
    ("Who are you?", "I am a small audio assistant trained on the demo corpus."),
)


def note_name(midi: int) -> str:
    """Scientific pitch notation, MIDI 60 = C4."""
    return f"{NOTE_NAMES[midi % 12]}{midi // 12 - 1}"


def _turns(*pairs: tuple[str | list[dict[str, str]], str]) -> tuple[Message, ...]:
    return tuple(
        Message(role, content)
        for user, reply in pairs
        for role, content in (("user", user), ("assistant", reply))
    )


def _speech(entry: ManifestEntry, audio: str, rng: random.Random) -> tuple[Message, ...]:
    turns = [([{"audio": audio}, {"text": rng.choice(TRANSCRIBE_QUESTIONS)}], entry.text)]
    if rng.random() < 0.5:
        turns.append(("Which language is spoken?", f"{LANGUAGE_NAMES[entry.audio_language]}."))
    return _turns(*turns)


def _note(entry: ManifestEntry, audio: str, rng: random.Random) -> tuple[Message, ...]:
    # entry.text is "<|pitch|><|midi_pitch_N|><|instrument|>NAME" (demo._mna_clip)
    midi = int(entry.text.split("<|midi_pitch_")[1].split("|>")[0])
    instrument = entry.text.rsplit("|>", 1)[1]
    turns = [([{"audio": audio}, {"text": "What note is played?"}], f"{note_name(midi)}.")]
    if rng.random() < 0.5:
        turns.append(("Which instrument plays it?", f"A {instrument}."))
    return _turns(*turns)


def _scene(entry: ManifestEntry, audio: str, rng: random.Random) -> tuple[Message, ...]:
    return _turns(
        (
            [{"audio": audio}, {"text": "What scene is this?"}],
            f"It sounds like {SCENE_ANSWERS[entry.text]}.",
        )
    )


def _count(entry: ManifestEntry, audio: str, rng: random.Random) -> tuple[Message, ...]:
    question = entry.question[0].upper() + entry.question[1:]
    return _turns(([{"audio": audio}, {"text": question}], f"{entry.text.capitalize()}."))


def _pair(
    speech: ManifestEntry, speech_audio: str, other_audio: str, rng: random.Random
) -> tuple[Message, ...]:
    first = rng.random() < 0.5
    audios = [speech_audio, other_audio] if first else [other_audio, speech_audio]
    return _turns(
        (
            [{"audio": a} for a in audios] + [{"text": "Which audio is speech?"}],
            f"Audio {1 if first else 2} is speech.",
        ),
        ("What does it say?", speech.text),
    )


def _text(index: int, rng: random.Random) -> tuple[Message, ...]:
    if index % 2 == 0:
        return _turns(GREETINGS[(index // 2) % len(GREETINGS)])
    a, b = rng.randint(1, 3), rng.randint(1, 3)
    question = f"What is {NUMBER_WORDS[a - 1]} plus {NUMBER_WORDS[b - 1]}?"
    return _turns((question, f"{NUMBER_WORDS[a + b - 1].capitalize()}."))


def demo_conversations(
    entries: list[ManifestEntry], root: Path, split: str, seed: int
) -> list[Conversation]:
    """The split's conversations, round-robin over the kinds.

    ``root`` is the folder audio paths are relative to.
    """
    rng = random.Random(f"demo-chat-{seed}-{split}")
    audio = {e.audio: os.path.relpath(e.audio, root) for e in entries}
    speech = [e for e in entries if e.task == "asr"]
    builders = {"note": ("mna", _note), "scene": ("asc", _scene), "count": ("aqa", _count)}
    kinds = {"speech": [_speech(e, audio[e.audio], rng) for e in speech]}
    for kind, (task, build) in builders.items():
        kinds[kind] = [build(e, audio[e.audio], rng) for e in entries if e.task == task]
    sounds = [e for e in entries if e.task in ("mna", "asc", "aqa")]
    count = max(1, len(sounds) // 6)
    kinds["pair"] = [
        _pair(s, audio[s.audio], audio[o.audio], rng)
        for s, o in zip(rng.sample(speech, count), rng.sample(sounds, count))
    ]
    kinds["text"] = [_text(i, rng) for i in range(max(2, len(speech) // 4))]
    numbered = [
        [Conversation(f"{split}-{kind}-{i}", messages) for i, messages in enumerate(items)]
        for kind, items in kinds.items()
    ]
    return [c for round_ in itertools.zip_longest(*numbered) for c in round_ if c is not None]


def build_demo_chat(
    root: str | os.PathLike | None = None, seed: int = 0, size: int = 48
) -> dict[str, Path]:
    """Build the demo corpus (:func:`build_demo_corpus`) and its chat files unless there.

    Returns ``{split: path}``.
    """
    manifests = build_demo_corpus(root, seed=seed, size=size)
    paths = {}
    for split in SPLITS:
        folder = manifests[split].parent
        path = folder / f"chat-{CHAT_VERSION}-{split}.jsonl"
        if not path.exists():
            conversations = demo_conversations(read_manifest(manifests[split]), folder, split, seed)
            handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
            os.close(handle)
            write_conversations(staging, conversations)
            os.replace(staging, path)  # atomic: readers see the whole file or none
        paths[split] = path
    return paths
