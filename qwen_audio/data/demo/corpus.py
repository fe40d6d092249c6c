"""The embedded demo corpus: a few hundred short clips that a small model can learn on a CPU.

The clips are generated on first use. Speech is real synthesised speech (libespeak-ng,
:mod:`qwen_audio.data.demo.espeak`) of spoken digit strings in English and Mandarin ("four one seven
two", "四一七二"). Each clip is used for ASR and for SRWT, with the synthesiser's own word timings.

Digit strings are used, as in TIDIGITS, because a small model can learn to transcribe a ten-word
vocabulary on a CPU in minutes. The held-out strings (3 to 6 digits) are new combinations of seen
words. A falling test WER is therefore real generalisation. Training strings have 1 to 6 digits.
Every utterance has a little silence before and after it, as recorded speech does (espeak-ng starts
and stops with the voice). Babble scenes mix voices reading the sentences of
``qwen_audio/assets/demo_corpus.txt``.

The sound tasks follow the paper's formats, with targets that the audio determines. MNA clips are
harmonic notes of five timbres, with overtones and envelope varied per clip. Their target is
``<|pitch|><|midi_pitch_N|><|instrument|>NAME``. ASC clips are five scenes built from shaped noise
and synthetic events (rain, wind, engine, birds, babble of several voices). AQA clips hold 1 to 6
beeps or clicks. "How many ...?" is answered by a number word, and "are there any ...?" by yes/no.

Held-out items are held out by construction. Every item's split is a function of the item itself. It
is a hash (:func:`split_of`) of the digit sequence, the babble sentence or the AQA event layout. A
note's split comes from :func:`note_split`. No validation or test item is thus in any training
split, for any seed and any size. A spoken digit string is held out in both languages.

Robustness rows are held out by construction too. Validation and test each have two of them besides
their clean speech. ``<split>_noisy`` holds the split's clean ASR clips mixed with a noise type of
that split alone, at 5 to 20 dB SNR. ``<split>_unseen`` holds the split's digit strings read by
espeak-ng voice variants of that split alone. Training speech uses :data:`VOICE_VARIANTS`
``["train"]``. The training noise clips (``noise.jsonl``, for :mod:`qwen_audio.data.augment`) use
:data:`NOISE_KINDS` ``["train"]``. ``items.json`` records the voices and noise types each split
used.

Everything derives from ``seed``, with no network. The same seed and size give the same bytes. The
corpus is written to a temporary folder, which is renamed into place at the end. Concurrent builders
thus never see or leave a half-written corpus. The loser of the race discards its copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile
import torch
from torchaudio.functional import add_noise

from qwen_audio.data.demo.espeak import SpeechJob, synthesize_files
from qwen_audio.data.manifest import ManifestEntry, write_manifest
from qwen_audio.prompts import TimedWord

DEMO_VERSION = "8"  # bump when generation changes, so caches of an older corpus are not reused
DEMO_DIR_ENV = "QWEN_AUDIO_DEMO_DIR"
CORPUS_RECORD = "demo_corpus.json"  # in an exported model folder: the corpus_record() of the corpus it trained on
SPLITS = ("train", "validation", "test")
CONDITIONS = ("noisy", "unseen")  # robustness rows of a held-out split: <split>_<condition>.jsonl
HELD_OUT_ROWS = tuple(f"{split}_{condition}" for split in SPLITS[1:] for condition in CONDITIONS)
NOISE_MANIFEST = "noise"  # noise.jsonl: the training noise clips
MANIFESTS = (*SPLITS, *HELD_OUT_ROWS, NOISE_MANIFEST)
SENTENCES_FILE = Path(__file__).resolve().parents[2] / "assets" / "demo_corpus.txt"
SOUND_RATE = 16000  # sample rate of the generated (non-speech) clips
HELD_OUT_PERCENT = {"test": 10, "validation": 10}  # of all possible items; the rest is for training
MAX_HELD_OUT = 100  # validation and test clips per group: enough to measure, cheap to validate on
DIGITS = {
    "en": ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"),
    "zh": tuple("零一二三四五六七八九"),
}
DIGITS_PER_UTTERANCE = (
    3,
    6,
)  # inclusive, held-out strings; test scores stay comparable across corpus versions
TRAIN_DIGITS_PER_UTTERANCE = (
    1,
    6,
)  # training also has one- and two-digit strings: short clips align easily
SILENCE_BEFORE = (
    0.05,
    0.2,
)  # seconds of silence around each utterance, drawn per clip: espeak-ng leaves none,
SILENCE_AFTER = (
    0.1,
    0.3,
)  # and without it the last word ends with the clip, where the model dropped it most
LANGUAGE_VOICES = {"en": "en", "zh": "cmn"}  # espeak-ng voice of a language, with a variant below
# training variants read all clean speech; the held-out ones only their split's unseen-voice row
VOICE_VARIANTS = {
    "train": ("", "f1", "f2", "f4", "m1", "m3", "m5", "m7", "klatt", "klatt4"),
    "validation": ("f3", "m2", "m6", "klatt2"),
    "test": ("f5", "m4", "m8", "klatt3"),
}
# training noise is for augmentation; each held-out split mixes its own kinds into its noisy row
NOISE_KINDS = {
    "train": ("white", "pink", "rain", "wind", "engine", "birds"),
    "validation": ("brown", "siren"),
    "test": ("blue", "buzz"),
}
NOISE_CLIPS_PER_KIND = 8  # training noise clips of each kind
NOISE_SECONDS = 4.0
SNR_DB = (5.0, 20.0)  # of the noisy rows
RATES = (130, 210)  # words per minute, drawn per utterance
PITCHES = (30, 70)
INSTRUMENTS = ("piano", "organ", "flute", "string", "brass")
MIDI_PITCHES = (48, 72)  # C3..C5, inclusive
TIMBRE_JITTER = (
    0.6,
    1.4,
)  # factors drawn per clip for each overtone's amplitude and for attack and decay
MNA_SECONDS = (
    0.4,
    0.8,
)  # a pitch is heard in half a second: many short notes rather than a few long ones
MNA_CLIPS_PER_SOUND = 6  # training notes per training clip of ASC and of AQA
SCENES = ("rain", "wind", "engine", "birds", "babble")
EVENT_KINDS = ("beep", "click")
NUMBER_WORDS = ("one", "two", "three", "four", "five", "six")
MIN_EVENT_GAP = 0.3  # seconds between AQA event onsets, so each event is separately audible
AQA_SLOTS = (
    15  # event onsets at 0.1 s + k * MIN_EVENT_GAP, k < AQA_SLOTS: the last ends inside a 5 s clip
)
ASC_SECONDS = (1.0, 2.5)  # a scene is recognisable in a second; longer clips take steps from speech

# Harmonic amplitudes (the fundamental is always the strongest partial), attack and decay per
# instrument.
_TIMBRES = {
    "piano": dict(partials=(1.0, 0.5, 0.3, 0.2, 0.12, 0.08), attack=0.005, decay=2.5),
    "organ": dict(partials=(1.0, 0.7, 0.5, 0.35, 0.25, 0.2), attack=0.02, decay=0.0),
    "flute": dict(partials=(1.0, 0.25, 0.1), attack=0.08, decay=0.0),
    "string": dict(partials=tuple(1 / k for k in range(1, 11)), attack=0.15, decay=0.0),
    "brass": dict(partials=(1.0, 0.85, 0.7, 0.55, 0.4, 0.3, 0.2), attack=0.06, decay=0.3),
}


def default_demo_dir() -> Path:
    """``$QWEN_AUDIO_DEMO_DIR``, else ``$XDG_CACHE_HOME/qwen_audio``.

    By default this is ``~/.cache/qwen_audio``.
    """
    if os.environ.get(DEMO_DIR_ENV):
        return Path(os.environ[DEMO_DIR_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qwen_audio"


def build_demo_corpus(
    root: str | os.PathLike | None = None, seed: int = 0, size: int = 48
) -> dict[str, Path]:
    """Build the corpus unless it is there, and return ``{name: manifest path}``.

    The names are the :data:`SPLITS`, the :data:`HELD_OUT_ROWS` (``test_noisy``, ...) and the
    training noise (``noise``).

    The corpus lives in ``root`` (default :func:`default_demo_dir`) under
    ``demo-<version>-seed<seed>-size<size>``. Corpora of other versions or parameters thus never
    collide.

    ``size`` is the number of training clips of English and of Mandarin speech. ASC and AQA get
    ``max(1, size // 4)`` each, and MNA six times as many. Validation and test get
    ``min(100, max(1, size // 4))`` of every group. Each robustness row gets as many ASR lines per
    language. Each speech clip gives an ASR and an SRWT line.
    """
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    parent = Path(root).expanduser() if root is not None else default_demo_dir()
    root = parent / f"demo-{DEMO_VERSION}-seed{seed}-size{size}"
    config = corpus_record(seed, size)
    if not _is_built(root, config):
        root.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
        try:
            _generate(staging, seed, size)
            (staging / "corpus.json").write_text(json.dumps(config, indent=1) + "\n")
            os.rename(
                staging, root
            )  # atomic; fails if another process has put a corpus there meanwhile
        except OSError:
            if not _is_built(root, config):
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return {name: root / f"{name}.jsonl" for name in MANIFESTS}


def corpus_record(seed: int, size: int) -> dict:
    """Return the record that identifies a built corpus.

    It is written beside the corpus's manifests, and by the export of a model trained on it
    (:data:`CORPUS_RECORD`). Evaluation can then read the same corpus back.
    """
    return {"version": DEMO_VERSION, "seed": seed, "size": size}


def corpus_fingerprint(manifests: dict[str, Path]) -> str:
    """Return a hash of a built corpus's manifests and item list.

    Two corpora of one record (version, seed, size) may come from different generation code. An
    example is a changed note range without a version bump. The record cannot tell them apart, but
    their fingerprints differ.

    The audio is left out, because its float rounding may differ between CPUs. The text and
    durations do not.
    """
    root = manifests["train"].parent
    digest = hashlib.sha256()
    for name in [*(f"{name}.jsonl" for name in MANIFESTS), "items.json"]:
        digest.update((root / name).read_bytes())
    return digest.hexdigest()[:16]


def _is_built(root: Path, config: dict) -> bool:
    if not root.exists() or not any(root.iterdir()):
        return False
    try:
        if json.loads((root / "corpus.json").read_text()) == config:
            return True
    except (OSError, ValueError):
        pass
    raise ValueError(
        f"{root} exists but holds no demo corpus built with {config}; remove it to rebuild"
    )


def _rng(seed: int, *names: str) -> np.random.Generator:
    """An independent, stable stream per purpose.

    Changing one part of the corpus thus leaves the others unchanged.
    """
    return np.random.default_rng([seed, *(zlib.crc32(name.encode()) for name in names)])


def read_sentences() -> dict[str, list[str]]:
    """The ``en`` and ``zh`` sentences of ``assets/demo_corpus.txt``.

    Its ``label`` lines list class names.
    """
    sentences: dict[str, list[str]] = {"en": [], "zh": []}
    text = SENTENCES_FILE.read_text(encoding="utf-8")
    for number, line in enumerate(text.splitlines(), start=1):
        kind, _, sentence = line.partition("\t")
        if kind in sentences and sentence.strip():
            sentences[kind].append(sentence.strip())
        elif kind != "label":
            raise ValueError(
                f"demo_corpus.txt:{number}: expected 'en|zh|label<TAB>text', got {line!r}"
            )
    return sentences


def split_of(key: str) -> str:
    """Return the split of the item ``key`` names.

    Keys look like ``digits:4172``, ``sentence:...`` and ``aqa:beep:1,4``. The split is a stable
    hash of the key. It depends on neither the seed nor the size nor the order of generation.
    """
    bucket = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") % 100
    if bucket < HELD_OUT_PERCENT["test"]:
        return "test"
    return (
        "validation"
        if bucket < HELD_OUT_PERCENT["test"] + HELD_OUT_PERCENT["validation"]
        else "train"
    )


def _sentence_splits() -> dict[str, dict[str, list[str]]]:
    """``{language: {split: sentences}}``, each sentence in the split :func:`split_of` gives it."""
    splits = {}
    for language, sentences in read_sentences().items():
        splits[language] = {split: [] for split in SPLITS}
        for sentence in sentences:
            splits[language][split_of(f"sentence:{sentence}")].append(sentence)
    return splits


def digit_key(text: str, language: str) -> str:
    """Return the item a spoken digit string is, the same in both languages.

    ``"four one"`` and ``"四一"`` are both ``digits:41``.
    """
    words = text.split() if language == "en" else list(text)
    return "digits:" + "".join(str(DIGITS[language].index(word)) for word in words)


def _digit_strings(seed: int, language: str, counts: dict[str, int]) -> dict[str, list[str]]:
    """Draw ``{split: digit strings}``, distinct within the corpus.

    Each string is drawn until it falls in its split. Training strings have
    :data:`TRAIN_DIGITS_PER_UTTERANCE` digits, and held-out ones :data:`DIGITS_PER_UTTERANCE`.
    """
    rng, seen, strings = _rng(seed, "digits", language), set(), {}
    joiner = " " if language == "en" else ""
    for split in SPLITS:
        strings[split] = []
        shortest, longest = TRAIN_DIGITS_PER_UTTERANCE if split == "train" else DIGITS_PER_UTTERANCE
        while len(strings[split]) < counts[split]:
            length = int(rng.integers(shortest, longest + 1))
            text = joiner.join(DIGITS[language][d] for d in rng.integers(0, 10, size=length))
            if text not in seen and split_of(digit_key(text, language)) == split:
                seen.add(text)
                strings[split].append(text)
    return strings


def _generate(folder: Path, seed: int, size: int) -> None:
    sentences = _sentence_splits()
    held_out = min(MAX_HELD_OUT, max(1, size // 4))
    counts = {split: size if split == "train" else held_out for split in SPLITS}
    digits = {language: _digit_strings(seed, language, counts) for language in ("en", "zh")}
    # clips per sound task: their tasks are learned in fewer examples than speech
    sounds = {split: max(1, size // 4) if split == "train" else held_out for split in SPLITS}
    notes = {
        split: MNA_CLIPS_PER_SOUND * sounds[split] if split == "train" else held_out
        for split in SPLITS
    }
    # Every utterance (speech clips, and the voices of babble scenes) is rendered in one synthesiser
    # process.
    speech: dict[str, list[tuple[str, SpeechJob]]] = {}
    voices: dict[tuple[str, int], list[SpeechJob]] = {}
    (folder / "voices").mkdir()
    for split in SPLITS:
        (folder / split).mkdir()
        speech[split] = []
        for language in ("en", "zh"):
            rng = _rng(seed, split, language)
            for i, text in enumerate(digits[language][split]):
                path = folder / split / f"speech_{language}_{i:04d}.wav"
                speech[split].append((language, _speech_job(rng, text, language, path)))
        for i in range(sounds[split]):
            if SCENES[i % len(SCENES)] == "babble":
                rng = _rng(seed, split, "babble", str(i))
                languages = [("en", "zh")[k % 2] for k in range(int(rng.integers(4, 7)))]
                voices[split, i] = [
                    _speech_job(
                        rng,
                        str(rng.choice(sentences[language][split])),
                        language,
                        folder / "voices" / f"{split}_{i:04d}_{k}.wav",
                    )
                    for k, language in enumerate(languages)
                ]
    unseen: dict[str, list[tuple[str, SpeechJob]]] = {}
    for split in SPLITS[1:]:
        (folder / f"{split}_unseen").mkdir()
        unseen[split] = []
        for language in ("en", "zh"):
            rng = _rng(seed, split, "unseen", language)
            for i, text in enumerate(digits[language][split]):
                path = folder / f"{split}_unseen" / f"speech_{language}_{i:04d}.wav"
                unseen[split].append((language, _speech_job(rng, text, language, path, split)))
    speech_jobs = [job for split in SPLITS for _, job in speech[split]]
    babble_jobs = [job for v in voices.values() for job in v]
    unseen_jobs = [job for split in unseen for _, job in unseen[split]]
    rendered = synthesize_files(speech_jobs + babble_jobs + unseen_jobs)
    timings = iter(rendered[: len(speech_jobs)])
    items: dict[str, set[str]] = {split: set() for split in SPLITS}
    for split in SPLITS:
        entries = []
        for language, job in speech[split]:
            entries += _speech_entries(folder, job, language, next(timings))
            items[split].add(digit_key(job.text, language))
        for i in range(notes[split]):
            mna, note = _mna_clip(
                _rng(seed, split, "mna", str(i)), folder, f"{split}/mna_{i:04d}.wav", i, split
            )
            entries.append(mna)
            items[split].add(note)
        for i in range(sounds[split]):
            clip = f"{i:04d}.wav"
            aqa, layout = _aqa_clip(
                _rng(seed, split, "aqa", str(i)), folder, f"{split}/aqa_{clip}", split
            )
            scene = _asc_clip(
                _rng(seed, split, "asc", str(i)),
                folder,
                f"{split}/asc_{clip}",
                i,
                voices.get((split, i)),
            )
            entries += [scene, aqa]
            items[split] |= {
                layout,
                *(f"sentence:{job.text}" for job in voices.get((split, i), ())),
            }
        write_manifest(folder / f"{split}.jsonl", entries)
    used_voices = {"train": {job.voice for job in speech_jobs + babble_jobs}}
    used_noises = {"train": set(_write_noise_clips(folder, seed)) | set(SCENES)}
    for split in SPLITS[1:]:
        write_manifest(
            folder / f"{split}_unseen.jsonl",
            [
                ManifestEntry(
                    os.path.relpath(job.path, folder),
                    "asr",
                    job.text,
                    language,
                    language,
                    duration=round(soundfile.info(job.path).duration, 4),
                )
                for language, job in unseen[split]
            ],
        )
        used_voices[split] = {job.voice for _, job in unseen[split]}
        used_noises[split] = _write_noisy_row(folder, seed, split, speech[split])
    # which items, voices and noise types each split holds, to check that held-out ones are held out
    record = {split: sorted(keys) for split, keys in items.items()}
    record |= {
        "voices": {s: sorted(v) for s, v in used_voices.items()},
        "noises": {s: sorted(n) for s, n in used_noises.items()},
    }
    (folder / "items.json").write_text(json.dumps(record, indent=0))
    shutil.rmtree(folder / "voices")


def _speech_job(
    rng: np.random.Generator, text: str, language: str, path: Path, split: str = "train"
) -> SpeechJob:
    """An utterance in a voice of ``split`` (:data:`VOICE_VARIANTS`) at a random rate and pitch."""
    variant = str(rng.choice(VOICE_VARIANTS[split]))
    voice = LANGUAGE_VOICES[language] + (f"+{variant}" if variant else "")
    rate, pitch = (
        int(rng.integers(RATES[0], RATES[1] + 1)),
        int(rng.integers(PITCHES[0], PITCHES[1] + 1)),
    )
    before, after = (
        round(float(rng.uniform(*SILENCE_BEFORE)), 3),
        round(float(rng.uniform(*SILENCE_AFTER)), 3),
    )
    return SpeechJob(
        text=text,
        path=str(path),
        voice=voice,
        rate=rate,
        pitch=pitch,
        silence_before=before,
        silence_after=after,
    )


def _speech_entries(
    folder: Path, job: SpeechJob, language: str, timings: list[tuple[str, float, float]]
) -> list[ManifestEntry]:
    """The ASR and SRWT lines of one utterance (times rounded to the millisecond)."""
    audio = os.path.relpath(job.path, folder)
    duration = round(soundfile.info(job.path).duration, 4)
    words = tuple(TimedWord(word, round(start, 3), round(end, 3)) for word, start, end in timings)
    return [
        ManifestEntry(audio, "asr", job.text, language, language, duration=duration),
        ManifestEntry(audio, "srwt", job.text, language, language, duration=duration, words=words),
    ]


def _write_noise_clips(folder: Path, seed: int) -> list[str]:
    """``noise.jsonl``: :data:`NOISE_CLIPS_PER_KIND` clips of each training noise kind."""
    (folder / "noise").mkdir()
    lines = []
    for kind in NOISE_KINDS["train"]:
        for k in range(NOISE_CLIPS_PER_KIND):
            path = f"noise/{kind}_{k}.wav"
            audio = _NOISES[kind](_rng(seed, "noise", kind, str(k)), NOISE_SECONDS)
            _write_sound(folder, path, audio, _rng(seed, "noise level", kind, str(k)))
            lines.append(json.dumps({"audio": path, "kind": kind}) + "\n")
    (folder / f"{NOISE_MANIFEST}.jsonl").write_text("".join(lines))
    return list(NOISE_KINDS["train"])


def _write_noisy_row(
    folder: Path, seed: int, split: str, speech: list[tuple[str, SpeechJob]]
) -> set[str]:
    """Write ``<split>_noisy.jsonl`` and return the noise kinds it used.

    Each of the split's clean ASR clips is mixed with a noise kind of the split, taken in turn. The
    SNR is drawn from :data:`SNR_DB` and applied with ``torchaudio.functional.add_noise``.
    """
    rng, kinds, entries = _rng(seed, split, "noisy"), NOISE_KINDS[split], []
    (folder / f"{split}_noisy").mkdir()
    for i, (language, job) in enumerate(speech):
        clean, rate = soundfile.read(job.path, dtype="float32")
        kind = kinds[i % len(kinds)]
        noise = _NOISES[kind](rng, (len(clean) + 1) / rate)[: len(clean)]
        snr = torch.tensor([rng.uniform(*SNR_DB)])
        noise = torch.from_numpy(noise).float()
        mixed = add_noise(torch.from_numpy(clean)[None], noise[None], snr)[0].numpy()
        mixed /= max(1.0, np.abs(mixed).max() / 0.99)  # no clipping; a scale keeps the SNR
        path = f"{split}_noisy/{Path(job.path).name}"
        soundfile.write(folder / path, mixed, rate, subtype="PCM_16")
        duration = round(len(mixed) / rate, 4)
        entries.append(ManifestEntry(path, "asr", job.text, language, language, duration=duration))
    write_manifest(folder / f"{split}_noisy.jsonl", entries)
    return {kinds[i % len(kinds)] for i in range(len(speech))}


def _write_sound(folder: Path, path: str, audio: np.ndarray, rng: np.random.Generator) -> float:
    """Peak-normalise ``audio`` to a random level and write it as 16-bit at ``SOUND_RATE``.

    Returns the duration in seconds.
    """
    audio = audio / np.abs(audio).max() * rng.uniform(0.3, 0.9)
    soundfile.write(folder / path, audio.astype(np.float32), SOUND_RATE, subtype="PCM_16")
    return round(len(audio) / SOUND_RATE, 4)


def _midi_to_hz(midi: int) -> float:
    return 440.0 * 2.0 ** ((midi - 69) / 12)


def _times(seconds: float) -> np.ndarray:
    return np.arange(int(seconds * SOUND_RATE)) / SOUND_RATE


def note_split(instrument: str, midi: int) -> str:
    """Return the split of a note (instrument, pitch).

    Every tenth pitch of each instrument is test, and the next one validation. The pattern shifts by
    3 semitones per instrument. Each instrument thus has held-out pitches that other instruments
    play in training. A hash could leave an instrument without a test note.
    """
    bucket = (midi + 3 * INSTRUMENTS.index(instrument)) % 10
    return "test" if bucket == 0 else "validation" if bucket == 1 else "train"


def _mna_clip(
    rng: np.random.Generator, folder: Path, path: str, index: int, split: str
) -> tuple[ManifestEntry, str]:
    """Make a note of the split from harmonic partials of the instrument's timbre.

    The note has the instrument's attack and, for piano and brass, its decay.
    """
    instrument = INSTRUMENTS[index % len(INSTRUMENTS)]
    midis = [
        m for m in range(MIDI_PITCHES[0], MIDI_PITCHES[1] + 1) if note_split(instrument, m) == split
    ]
    midi = int(rng.choice(midis))
    timbre, f0, t = _TIMBRES[instrument], _midi_to_hz(midi), _times(rng.uniform(*MNA_SECONDS))
    partials = np.array(timbre["partials"])
    # Each clip's overtones and envelope vary around its instrument's: a note is not one fixed
    # spectrum to memorise.
    partials[1:] = np.minimum(
        0.95, partials[1:] * rng.uniform(*TIMBRE_JITTER, size=len(partials) - 1)
    )
    attack, decay = (timbre[key] * rng.uniform(*TIMBRE_JITTER) for key in ("attack", "decay"))
    note = sum(
        amplitude * np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi))
        for k, amplitude in enumerate(partials, start=1)
        if k * f0 < 0.45 * SOUND_RATE
    )
    envelope = np.minimum(1.0, t / attack) * np.exp(-decay * t)
    envelope *= np.minimum(1.0, (t[-1] - t) / 0.05)  # 50 ms release, no click at the end
    duration = _write_sound(folder, path, note * envelope, rng)
    text = f"<|pitch|><|midi_pitch_{midi}|><|instrument|>{instrument}"
    return ManifestEntry(
        path, "mna", text, None, "en", duration=duration
    ), f"note:{instrument}:{midi}"


def _shaped_noise(rng: np.random.Generator, n: int, gain) -> np.ndarray:
    """Gaussian noise whose spectrum is multiplied by ``gain(frequency_hz)``."""
    spectrum = np.fft.rfft(rng.standard_normal(n)) * gain(np.fft.rfftfreq(n, 1 / SOUND_RATE))
    return np.fft.irfft(spectrum, n)


def _bursts(n: int, onsets: np.ndarray, burst: np.ndarray, amplitudes: np.ndarray) -> np.ndarray:
    out = np.zeros(n)
    for onset, amplitude in zip(onsets, amplitudes):
        piece = burst[: n - onset]
        out[onset : onset + len(piece)] += amplitude * piece
    return out


def _rain(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Bright hiss plus dense, randomly loud droplets (short decaying noise bursts)."""
    n = int(seconds * SOUND_RATE)
    hiss = 0.15 * _shaped_noise(rng, n, lambda f: f / (f + 3000))
    drops = int(rng.uniform(40, 120) * seconds)
    burst = rng.standard_normal(160) * np.exp(-np.arange(160) / rng.uniform(10, 40))
    return hiss + _bursts(n, rng.integers(0, n, drops), burst, rng.lognormal(-1.0, 0.6, drops))


def _wind(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Low-passed noise swelling and fading slowly."""
    t, cutoff = _times(seconds), rng.uniform(150, 500)
    gust = 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.2, 0.6) * t + rng.uniform(0, 2 * np.pi))
    return gust * _shaped_noise(rng, len(t), lambda f: 1 / (1 + (f / cutoff) ** 2))


def _engine(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A low firing frequency with many harmonics, its speed wobbling slightly, over rumble."""
    t, f0 = _times(seconds), rng.uniform(25, 60)
    phase = (
        2
        * np.pi
        * np.cumsum(f0 * (1 + 0.02 * np.sin(2 * np.pi * rng.uniform(1, 3) * t)))
        / SOUND_RATE
    )
    hum = sum(np.sin(k * phase + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 41))
    return hum + 0.3 * _shaped_noise(rng, len(t), lambda f: 1 / (1 + (f / 1000) ** 2))


def _birds(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A few chirps (fast frequency sweeps between 2 and 6 kHz) over faint background noise."""
    n = int(seconds * SOUND_RATE)
    out = 0.02 * rng.standard_normal(n)
    for _ in range(int(rng.integers(3, 9))):
        t = _times(rng.uniform(0.06, 0.2))
        start_hz, end_hz = rng.uniform(2000, 6000, size=2)
        phase = 2 * np.pi * np.cumsum(start_hz + (end_hz - start_hz) * t / t[-1]) / SOUND_RATE
        chirp = np.sin(phase) * np.hanning(len(t))
        out += _bursts(n, rng.integers(0, n - len(t), 1), chirp, rng.uniform(0.3, 1.0, 1))
    return out


def _babble(rng: np.random.Generator, seconds: float, voices: list[SpeechJob]) -> np.ndarray:
    """Several voices talking over each other at random offsets and levels."""
    n = int(seconds * SOUND_RATE)
    out = 0.005 * rng.standard_normal(n)
    for job in voices:
        samples, rate = soundfile.read(job.path)
        # FFT resampling: the utterances start and end in silence, so its circular wrap-around is
        # harmless
        length = round(len(samples) * SOUND_RATE / rate)
        speech = (
            np.fft.irfft(np.fft.rfft(samples)[: length // 2 + 1], length) * length / len(samples)
        )
        onset = int(rng.integers(-len(speech) // 2, n - len(speech) // 2))
        piece = speech[max(0, -onset) : n - onset]
        out[max(0, onset) : max(0, onset) + len(piece)] += rng.uniform(0.4, 1.0) * piece
    return out


def _coloured(exponent: float):
    """Noise of power ``frequency ** exponent`` (white 0, pink -1, brown -2, blue +1)."""

    def noise(rng: np.random.Generator, seconds: float) -> np.ndarray:
        n = int(seconds * SOUND_RATE)
        return _shaped_noise(rng, n, lambda f: np.maximum(f, 20.0) ** (exponent / 2))

    return noise


def _siren(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A tone with one overtone, its pitch swinging slowly around 600 to 1200 Hz."""
    t = _times(seconds)
    centre, depth, rate = rng.uniform(600, 1200), rng.uniform(200, 500), rng.uniform(0.3, 1.5)
    phase = 2 * np.pi * np.cumsum(centre + depth * np.sin(2 * np.pi * rate * t)) / SOUND_RATE
    return np.sin(phase) + 0.3 * np.sin(2 * phase) + 0.05 * rng.standard_normal(len(t))


def _buzz(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Mains buzz at 50 or 60 Hz, with its harmonics up to 4 kHz and faint hiss.

    The harmonics make a sawtooth's spectrum.
    """
    t, f0 = _times(seconds), float(rng.choice([50.0, 60.0]))
    harmonics = range(1, int(4000 / f0) + 1)
    buzz = sum(np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi)) / k for k in harmonics)
    return buzz + 0.05 * rng.standard_normal(len(t))


_SOUNDS = {"rain": _rain, "wind": _wind, "engine": _engine, "birds": _birds}
_NOISES = {
    **_SOUNDS,
    **{
        name: _coloured(exponent)
        for name, exponent in (("white", 0), ("pink", -1), ("brown", -2), ("blue", 1))
    },
    "siren": _siren,
    "buzz": _buzz,
}


def _asc_clip(
    rng: np.random.Generator, folder: Path, path: str, index: int, voices: list[SpeechJob] | None
) -> ManifestEntry:
    scene, seconds = SCENES[index % len(SCENES)], rng.uniform(*ASC_SECONDS)
    audio = _babble(rng, seconds, voices) if scene == "babble" else _SOUNDS[scene](rng, seconds)
    return ManifestEntry(
        path, "asc", scene, None, "en", duration=_write_sound(folder, path, audio, rng)
    )


def aqa_layout_key(kind: str, slots: Sequence[int]) -> str:
    """Return the item an AQA clip is, from its kind of event and the slots they start in.

    Slots are multiples of ``MIN_EVENT_GAP``.
    """
    return f"aqa:{kind}:{','.join(map(str, slots))}"


def _aqa_clip(
    rng: np.random.Generator, folder: Path, path: str, split: str
) -> tuple[ManifestEntry, str]:
    """Make an AQA clip in a layout of the split, with a counting or a yes/no question about it.

    The clip holds 1..6 beeps or clicks at least ``MIN_EVENT_GAP`` apart.
    """
    while True:
        kind, count = (
            EVENT_KINDS[int(rng.integers(len(EVENT_KINDS)))],
            int(rng.integers(1, len(NUMBER_WORDS) + 1)),
        )
        slots = np.sort(rng.choice(AQA_SLOTS, count, replace=False))
        if split_of(aqa_layout_key(kind, slots)) == split:
            break
    seconds = rng.uniform(
        max(MIN_EVENT_GAP * count + 1.0, 0.1 + MIN_EVENT_GAP * (slots[-1] + 1) + 0.3), 5.0
    )
    onset_s = 0.1 + MIN_EVENT_GAP * slots + rng.uniform(0, 0.05, count)
    if kind == "beep":
        burst = np.sin(2 * np.pi * rng.uniform(700, 2000) * _times(0.08)) * np.hanning(
            int(0.08 * SOUND_RATE)
        )
    else:
        burst = rng.standard_normal(48) * np.exp(-np.arange(48) / 8)
    n = int(seconds * SOUND_RATE)
    audio = 0.01 * rng.standard_normal(n) + _bursts(
        n,
        (onset_s * SOUND_RATE).astype(int),
        burst / np.abs(burst).max(),
        rng.uniform(0.5, 1.0, count),
    )
    if rng.random() < 0.75:
        question, answer = f"how many {kind}s are there?", NUMBER_WORDS[count - 1]
    else:
        asked = EVENT_KINDS[int(rng.integers(len(EVENT_KINDS)))]
        question, answer = f"are there any {asked}s?", "yes" if asked == kind else "no"
    duration = _write_sound(folder, path, audio, rng)
    entry = ManifestEntry(path, "aqa", answer, None, "en", duration=duration, question=question)
    return entry, aqa_layout_key(kind, slots)
