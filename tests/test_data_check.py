"""``python -m qwen_audio.data.check``: every bad line reported as ``file:line: field: reason``,
headers by default, decoded clips with ``--decode``; and the data module's ``validate`` before
step 0."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from qwen_audio.data import AudioTextDataModule
from qwen_audio.data.chat_datamodule import ChatDataModule
from qwen_audio.data.check import main
from qwen_audio.errors import InputError
from qwen_audio.tokenizer import QwenAudioTokenizer

REPO = Path(__file__).resolve().parents[1]


def line(audio: str, **changes) -> str:
    return json.dumps(
        {
            "audio": audio,
            "task": "asr",
            "text": "one",
            "audio_language": "en",
            "text_language": "en",
            **changes,
        }
    )


@pytest.fixture
def corpus(tmp_path) -> tuple[Path, dict[str, int]]:
    """A manifest whose lines hold one good clip and one of each fault.

    It comes with the line number of each.
    """
    rng = np.random.default_rng(0)
    good = 0.1 * rng.standard_normal(8000).astype(np.float32)
    soundfile.write(tmp_path / "good.wav", good, 16000)
    soundfile.write(tmp_path / "silent.wav", np.zeros(8000, np.float32), 16000)
    nan = good.copy()
    nan[100] = np.nan
    soundfile.write(
        tmp_path / "nan.wav", nan, 16000, subtype="FLOAT"
    )  # PCM_16 would clip NaN to a number
    corrupt = (
        tmp_path / "corrupt.flac"
    )  # its header reads, its second half of frames does not decode
    soundfile.write(corrupt, good, 16000)
    data = corrupt.read_bytes()
    corrupt.write_bytes(data[: len(data) // 2] + b"\xff" * (len(data) - len(data) // 2))
    lines = {
        "good": line("good.wav"),
        "silent": line("silent.wav"),
        "nan": line("nan.wav"),
        "missing": line("gone.wav"),
        "task": line("good.wav", task="nope"),
        "json": "{not json",
        "corrupt": line("corrupt.flac"),
    }
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("\n".join(lines.values()) + "\n")
    return manifest, {name: number for number, name in enumerate(lines, start=1)}


def check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "qwen_audio.data.check", "--no-progress", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_headers_only_by_default_every_bad_line_named(corpus):
    manifest, at = corpus
    result = check(str(manifest))
    assert result.returncode == 1, result.stderr
    assert result.stdout.splitlines() == [
        f"{manifest}:{at['missing']}: audio: file not found: {manifest.parent / 'gone.wav'}",
        f"{manifest}:{at['task']}: task: unknown task 'nope'",
        f"{manifest}:{at['json']}: malformed JSON: Expecting property name enclosed in double quotes (column 2)",
    ]


def test_decode_finds_silent_non_finite_and_unreadable_audio(corpus, capsys):
    manifest, at = corpus
    assert main(["--decode", "--workers", "2", "--no-progress", str(manifest)]) == 1
    result = capsys.readouterr()
    found = {text.split(": ")[0]: text for text in result.out.splitlines()}
    assert set(found) == {
        f"{manifest}:{at[name]}" for name in ("missing", "task", "json", "silent", "nan", "corrupt")
    }, result.out
    assert found[f"{manifest}:{at['silent']}"].endswith(
        "silent.wav is silent: every sample of the clip is 0"
    )
    assert found[f"{manifest}:{at['nan']}"].endswith("nan.wav contains NaN or infinite samples")
    assert "corrupt.flac" in found[f"{manifest}:{at['corrupt']}"]
    assert "6 problem(s) in 1 manifest(s), decoded" in result.err


def test_a_clean_manifest_exits_0(corpus, tmp_path, capsys):
    manifest, at = corpus
    clean = tmp_path / "clean.jsonl"
    clean.write_text(manifest.read_text().splitlines()[at["good"] - 1] + "\n")
    assert main(["--decode", "--no-progress", str(clean)]) == 0
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("validate", ["header", "decode"])
def test_the_data_module_validates_before_step_0(tmp_path, validate):
    rng = np.random.default_rng(0)
    soundfile.write(
        tmp_path / "good.wav", 0.1 * rng.standard_normal(8000).astype(np.float32), 16000
    )
    soundfile.write(tmp_path / "silent.wav", np.zeros(8000, np.float32), 16000)
    manifest = tmp_path / "train.jsonl"
    manifest.write_text(line("good.wav") + "\n" + line("silent.wav") + "\n")
    data = AudioTextDataModule(train=[str(manifest)], validate=validate)
    data.connect(QwenAudioTokenizer.demo(), n_mels=80)
    if (
        validate == "header"
    ):  # the header is fine: the silent clip is found only when its batch is built
        data.setup("fit")
        return
    with pytest.raises(
        InputError, match=rf"^1 bad clip\(s\):\n{manifest}:2: audio: .*silent.wav is silent"
    ):
        data.setup("fit")


def test_the_chat_data_module_decodes_conversation_clips_before_step_0(tmp_path):
    soundfile.write(tmp_path / "silent.wav", np.zeros(8000, np.float32), 16000)
    path = tmp_path / "chat.jsonl"
    conversation = {
        "messages": [
            {"role": "user", "content": [{"audio": "silent.wav"}, {"text": "what?"}]},
            {"role": "assistant", "content": "nothing"},
        ]
    }
    path.write_text(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "hello"},
                ]
            }
        )
        + "\n"
        + json.dumps(conversation)
        + "\n"
    )
    data = ChatDataModule(train=[str(path)], max_length=64, max_tokens=64, validate="decode")
    data.connect(QwenAudioTokenizer.demo(), n_mels=80)
    with pytest.raises(
        InputError, match=rf"^1 bad clip\(s\):\n{path}:2: audio: .*silent.wav is silent"
    ):
        data.setup("fit")
