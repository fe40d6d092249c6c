"""Streamed training: line-sharded readers, duration budget, weighted mixing and exact resume."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
import soundfile
import torch
from torch.utils.data import DataLoader

from qwen_audio.data.manifest import ManifestEntry, iter_manifest, write_manifest
from qwen_audio.data.streaming import StreamingAudioTextDataset
from qwen_audio.errors import AudioError

WORDS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def write_corpus(folder, name: str, count: int, seed: int) -> str:
    """``count`` noise clips of 0.2 to 1.5 s, each an ASR line.

    Each line's text names the manifest and the line.
    """
    rng = np.random.default_rng(seed)
    entries = []
    for i in range(count):
        seconds = round(float(rng.uniform(0.2, 1.5)), 3)
        path = folder / f"{name}_{i}.wav"
        soundfile.write(path, rng.normal(0, 0.1, int(seconds * 16000)).astype(np.float32), 16000)
        entries.append(
            ManifestEntry(
                path.name, "asr", f"{name} {WORDS[i % 9]} {i}", "en", "en", duration=seconds
            )
        )
    manifest = folder / f"{name}.jsonl"
    write_manifest(manifest, entries)
    return str(manifest)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stream")
    return write_corpus(folder, "alpha", 24, 0), write_corpus(folder, "beta", 12, 1)


def texts(demo, batch: dict) -> list[str]:
    """The target text of each row (the tokens under the labels)."""
    return [
        demo.decode([t for t in row.tolist() if t >= 0 and t != demo.eod]).strip()
        for row in batch["labels"]
    ]


def test_shards_split_the_lines_between_readers(corpus):
    lines = [e.text for e in iter_manifest(corpus[0])]
    shards = [[e.text for e in iter_manifest(corpus[0], shard=(i, 3))] for i in range(3)]
    assert shards == [lines[0::3], lines[1::3], lines[2::3]]
    with pytest.raises(ValueError, match="shard"):
        next(iter_manifest(corpus[0], shard=(3, 3)))


def test_batches_respect_the_budget_and_each_pass_covers_every_line(corpus, demo):
    dataset = StreamingAudioTextDataset([corpus[0]], demo, max_seconds=4.0, buffer_size=8)
    seconds = {e.text: e.duration for e in iter_manifest(corpus[0])}
    seen = []
    for batch in itertools.islice(iter(dataset), 12):
        rows = [t.strip() for t in texts(demo, batch)]
        assert len(rows) * max(seconds[r] for r in rows) <= 4.0
        seen += rows
    # 24 lines read in buffers of 8: the first 24 examples are exactly one pass over the manifest
    assert sorted(seen[:24]) == sorted(seconds)


def test_weights_set_the_mixture(corpus, demo):
    dataset = StreamingAudioTextDataset(
        list(corpus), demo, max_seconds=4.0, weights=[1, 3], buffer_size=50
    )
    counts = Counter(
        row.split()[0]
        for batch in itertools.islice(iter(dataset), 40)
        for row in texts(demo, batch)
    )
    share = counts["beta"] / sum(counts.values())
    assert 0.6 < share < 0.9  # 3 / (1 + 3) = 0.75


@pytest.mark.parametrize("workers", [0, 2])
def test_skip_resumes_with_the_batches_of_the_uninterrupted_stream(corpus, demo, workers):
    def loader(skip: int) -> DataLoader:
        dataset = StreamingAudioTextDataset(
            list(corpus), demo, max_seconds=3.0, buffer_size=10, seed=5
        )
        dataset.skip(skip)
        return DataLoader(dataset, batch_size=None, num_workers=workers)

    uninterrupted = list(itertools.islice(iter(loader(0)), 9))
    resumed = list(itertools.islice(iter(loader(4)), 5))
    assert len(uninterrupted) == 9 and len(resumed) == 5  # long enough to compare 5 batches
    for expected, got in zip(uninterrupted[4:], resumed, strict=True):
        assert torch.equal(expected["input_ids"], got["input_ids"])
        assert torch.equal(expected["audio_mel"], got["audio_mel"])


def test_entries_without_duration_are_refused(tmp_path, demo):
    soundfile.write(tmp_path / "a.wav", np.zeros(8000, np.float32), 16000)
    write_manifest(tmp_path / "m.jsonl", [ManifestEntry("a.wav", "asr", "hi", "en", "en")])
    with pytest.raises(ValueError, match="m.jsonl: entry .*a.wav has no duration"):
        next(iter(StreamingAudioTextDataset([str(tmp_path / "m.jsonl")], demo, max_seconds=4.0)))


def test_unusable_audio_names_its_line_or_is_skipped(tmp_path, demo):
    rng = np.random.default_rng(0)
    soundfile.write(tmp_path / "good.wav", rng.normal(0, 0.1, 8000).astype(np.float32), 16000)
    soundfile.write(tmp_path / "silent.wav", np.zeros(8000, np.float32), 16000)
    manifest = tmp_path / "m.jsonl"
    write_manifest(
        manifest,
        [
            ManifestEntry("good.wav", "asr", "one", "en", "en", duration=0.5),
            ManifestEntry("silent.wav", "asr", "two", "en", "en", duration=0.5),
        ],
    )
    with pytest.raises(
        AudioError, match=rf"^{manifest}:2: audio: audio file .*silent.wav is silent"
    ):
        next(iter(StreamingAudioTextDataset([str(manifest)], demo, max_seconds=4.0, buffer_size=2)))
    skipping = StreamingAudioTextDataset(
        [str(manifest)], demo, max_seconds=4.0, buffer_size=2, on_error="skip"
    )
    with pytest.warns(UserWarning, match=rf"^skipped: {manifest}:2: audio: "):
        batch = next(iter(skipping))
    assert sorted(batch["task"]) == ["asr", "skipped"] and batch["audio_mel"].shape[0] == 1
    assert texts(demo, batch).count("") == 1  # the stand-in row has no label
