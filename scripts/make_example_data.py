"""Write a small Hugging Face ``datasets`` folder and a lhotse CutSet of synthesised speech.

Usage:
    # writes data/my_hf_dataset/ and data/cuts_train.jsonl.gz.
    python scripts/make_example_data.py data

The outputs are there to try the converters on. See README, "Your own data", for the converters.
Both outputs hold English digit strings ("four one seven") spoken by espeak-ng
(:mod:`qwen_audio.data.demo.espeak`), so nothing is downloaded. Both are written by the real
libraries, in the layouts users bring.

``my_hf_dataset`` is a ``DatasetDict`` (``train``, ``test``) written by ``save_to_disk``. It has
Common Voice's columns: ``audio`` (an ``Audio`` column holding each clip's wav bytes), ``sentence``
and ``locale``.

``cuts_train.jsonl.gz`` is a lhotse CutSet whose recordings are wav files in ``example_audio/``. Its
supervisions spell the language out ("English", as lhotse recipes do) and carry the synthesiser's
word alignment.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np

from qwen_audio.data.demo.corpus import DIGITS
from qwen_audio.data.demo.espeak import SpeechJob, synthesize_files

HF_FOLDER = "my_hf_dataset"
CUTS_FILE = "cuts_train.jsonl.gz"
AUDIO_FOLDER = "example_audio"  # the wav files the cuts' recordings point at
SILENCE = 0.1  # seconds before and after each utterance


def speak(
    out: Path, name: str, count: int, rng: np.random.Generator
) -> list[tuple[Path, str, list]]:
    """``count`` spoken digit strings, written as ``out/name-<i>.wav``.

    Returns ``(path, text, word timings)`` for each.
    """
    texts = [
        " ".join(DIGITS["en"][d] for d in rng.integers(0, 10, rng.integers(1, 5)))
        for _ in range(count)
    ]
    jobs = [
        SpeechJob(
            text, str(out / f"{name}-{i:03d}.wav"), silence_before=SILENCE, silence_after=SILENCE
        )
        for i, text in enumerate(texts)
    ]
    return [(Path(job.path), job.text, words) for job, words in zip(jobs, synthesize_files(jobs))]


def write_hf_dataset(folder: Path, splits: dict[str, list[tuple[Path, str, list]]]) -> None:
    """A ``DatasetDict`` of the clips, written by ``save_to_disk``.

    The clips' bytes are held inside the dataset.
    """
    import datasets

    tables = {
        split: datasets.Dataset.from_dict(
            {
                "audio": [{"bytes": path.read_bytes(), "path": path.name} for path, _, _ in clips],
                "sentence": [text for _, text, _ in clips],
                "locale": ["en"] * len(clips),
            }
        ).cast_column("audio", datasets.Audio())
        for split, clips in splits.items()
    }
    datasets.DatasetDict(tables).save_to_disk(str(folder))


def write_cuts(path: Path, clips: list[tuple[Path, str, list]]) -> None:
    """A CutSet of one cut per clip file, its supervision carrying the word alignment."""
    from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet
    from lhotse.supervision import AlignmentItem

    recordings = [
        Recording.from_file(str(clip.resolve()), recording_id=clip.stem) for clip, _, _ in clips
    ]
    supervisions = [
        SupervisionSegment(
            f"{recording.id}-0",
            recording.id,
            start=0.0,
            duration=recording.duration,
            text=text,
            language="English",
            alignment={
                "word": [
                    AlignmentItem(word, start, round(end - start, 3)) for word, start, end in words
                ]
            },
        )
        for recording, (_, text, words) in zip(recordings, clips)
    ]
    cuts = CutSet.from_manifests(
        recordings=RecordingSet.from_recordings(recordings),
        supervisions=SupervisionSet.from_segments(supervisions),
    )
    cuts.to_file(str(path))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "out", type=Path, help="folder that receives the dataset, the cuts and their audio"
    )
    parser.add_argument("--train", type=int, default=24, help="training clips of each source")
    parser.add_argument("--test", type=int, default=8, help="test clips of the datasets folder")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    audio = args.out / AUDIO_FOLDER
    shutil.rmtree(audio, ignore_errors=True)
    audio.mkdir(parents=True)
    hf_splits = {
        split: speak(audio, f"hf-{split}", count, rng)
        for split, count in (("train", args.train), ("test", args.test))
    }
    write_hf_dataset(args.out / HF_FOLDER, hf_splits)
    for clips in hf_splits.values():  # their bytes are inside the dataset
        for path, _, _ in clips:
            path.unlink()
    write_cuts(args.out / CUTS_FILE, speak(audio, "cut", args.train, rng))
    print(f"wrote {args.out / HF_FOLDER}/ and {args.out / CUTS_FILE} (audio in {audio}/)")


if __name__ == "__main__":
    main()
