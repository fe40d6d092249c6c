"""``python -m qwen_audio.data.shard``: litdata chunks that give back each manifest line (with its
duration filled in) and its audio file's bytes, in order, split between readers as the manifest is;
with ``--conversations``, SFT conversations that train as their files do."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import torch

from qwen_audio.data.chat_datamodule import ChatDataModule
from qwen_audio.data.datamodule import AudioTextDataModule
from qwen_audio.data.demo.chat import build_demo_chat
from qwen_audio.data.manifest import ManifestEntry, ManifestError, read_manifest, write_manifest
from qwen_audio.data.shard import (
    is_shard_folder,
    main,
    read_shards,
    write_conversation_shards,
    write_shards,
)
from qwen_audio.errors import InputError
from qwen_audio.tokenizer import QwenAudioTokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def manifest(tmp_path):
    """Five noise clips; the third line has no duration and the fourth is a segment of its file."""
    rng = np.random.default_rng(1)
    entries = []
    for i in range(5):
        soundfile.write(tmp_path / f"c{i}.wav", rng.normal(0, 0.1, 8000 + 800 * i), 16000)
        duration = None if i == 2 else 0.2 if i == 3 else (8000 + 800 * i) / 16000
        entries.append(
            ManifestEntry(
                f"c{i}.wav",
                "asr",
                f"clip {i}",
                "en",
                "en",
                duration=duration,
                offset=0.1 if i == 3 else 0.0,
            )
        )
    write_manifest(tmp_path / "clips.jsonl", entries)
    return tmp_path / "clips.jsonl"


def test_the_command_writes_chunks_that_give_back_every_line_and_file(tmp_path, manifest):
    result = subprocess.run(
        [sys.executable, "-m", "qwen_audio.data.shard", str(manifest), str(tmp_path / "shards")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": REPO},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    folder = tmp_path / "shards" / "clips"
    assert is_shard_folder(folder) and not is_shard_folder(tmp_path)
    expected = read_manifest(manifest)
    got = list(read_shards(folder))
    assert [entry.audio for entry, _ in got] == [e.audio for e in expected]
    assert [entry.text for entry, _ in got] == [e.text for e in expected]
    assert [entry.duration for entry, _ in got] == [
        0.5,
        0.55,
        0.6,
        0.2,
        0.7,
    ]  # 9600 / 16000 filled in
    assert [entry.offset for entry, _ in got] == [0.0, 0.0, 0.0, 0.1, 0.0]
    assert [data for _, data in got] == [open(e.audio, "rb").read() for e in expected]
    assert [entry.source for entry, _ in got] == [f"{manifest}:{n}" for n in range(1, 6)]
    readers = [[entry.text for entry, _ in read_shards(folder, shard=(r, 2))] for r in (0, 1)]
    assert readers == [["clip 0", "clip 2", "clip 4"], ["clip 1", "clip 3"]]


def test_bad_lines_are_named_before_anything_is_written(tmp_path, manifest):
    with open(manifest, "a") as file:
        file.write(
            '{"audio": "gone.wav", "task": "asr", "text": "x", "audio_language": "en", '
            '"text_language": "en"}\n'
        )
    with pytest.raises(ManifestError, match=r"clips\.jsonl:6: audio: file not found"):
        write_shards([manifest], tmp_path / "shards")
    with pytest.warns(UserWarning, match="skipped 1 of 6 lines"):
        (folder,) = write_shards([manifest], tmp_path / "shards", on_error="skip")
    assert len(list(read_shards(folder))) == 5


def test_only_a_streamed_training_split_reads_shards(tmp_path, manifest):
    (folder,) = write_shards([manifest], tmp_path / "shards")
    data = AudioTextDataModule(train=[str(manifest)], val=[str(folder)])
    data.connect(QwenAudioTokenizer.demo(), n_mels=80)
    with pytest.raises(InputError, match=r"data\.val: .* are shard folders, which only a streamed"):
        data.setup("fit")


def chat_batches(train: str, **options) -> list[dict]:
    """An epoch of the SFT data module's training batches, pure-text conversations mixed in."""
    data = ChatDataModule(train=[train], text_ratio=0.2, max_tokens=2048, seed=3, **options)
    data.connect(QwenAudioTokenizer.demo(), n_mels=80)
    data.setup("fit")
    return list(data.train_dataloader())


def test_sft_trains_on_conversation_shards_as_on_their_files(tmp_path):
    file = build_demo_chat(tmp_path / "demo", size=1)["train"]
    main(["--conversations", str(file), str(tmp_path / "shards")])
    expected = chat_batches(str(file))
    os.rename(tmp_path / "demo", tmp_path / "gone")  # the shards alone hold the audio now
    got = chat_batches(str(tmp_path / "shards" / file.stem), validate="decode")
    assert len(got) == len(expected) > 1
    assert any(len(batch["audio_mel_lengths"]) for batch in got)
    for batch, want in zip(got, expected):
        assert batch.keys() == want.keys()
        for key, value in want.items():
            assert (
                torch.equal(batch[key], value) if torch.is_tensor(value) else batch[key] == value
            ), key


def test_a_bad_conversation_line_is_named_before_anything_is_written(tmp_path):
    file = tmp_path / "chat.jsonl"
    file.write_text(
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
        '{"messages": [{"role": "user", "content": [{"audio": "missing.wav"}]}, '
        '{"role": "assistant", "content": "x"}]}\n'
    )
    with pytest.raises(ManifestError) as info:
        write_conversation_shards([file], tmp_path / "shards")
    assert (
        str(info.value)
        == f"{file}:2: messages[0].content[0].audio: file not found: {tmp_path}/missing.wav"
    )
    assert not (tmp_path / "shards").exists()
