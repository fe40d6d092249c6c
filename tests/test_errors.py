"""Input errors end the entry points with their message alone.

Every other exception keeps its traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from qwen_audio.audio import AudioError
from qwen_audio.checkpoint import CheckpointError
from qwen_audio.config import ConfigError
from qwen_audio.data.manifest import ManifestError
from qwen_audio.errors import InputError, input_errors_reported

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("error", [ManifestError, AudioError, CheckpointError, ConfigError])
def test_input_errors_print_one_line_and_exit_1(error, capsys, monkeypatch):
    monkeypatch.delenv("QWEN_AUDIO_TRACEBACK", raising=False)
    assert issubclass(error, InputError) and issubclass(
        error, ValueError
    )  # callers catching ValueError still do
    with pytest.raises(SystemExit) as exit_info, input_errors_reported():
        raise error("bad.jsonl:3: audio: file not found")
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == "error: bad.jsonl:3: audio: file not found\n"


def test_other_errors_and_asked_for_tracebacks_propagate(monkeypatch):
    monkeypatch.delenv("QWEN_AUDIO_TRACEBACK", raising=False)
    with pytest.raises(RuntimeError), input_errors_reported():
        raise RuntimeError("a bug")
    with pytest.raises(ValueError), input_errors_reported():
        raise ValueError("not one of ours")
    with pytest.raises(ConfigError), input_errors_reported(print_traceback=True):
        raise ConfigError("shown with its traceback")
    monkeypatch.setenv("QWEN_AUDIO_TRACEBACK", "1")
    with pytest.raises(ConfigError), input_errors_reported():
        raise ConfigError("shown with its traceback")


def _recipe(*args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "QWEN_AUDIO_TRACEBACK"}
    environment.update(PYTHONPATH=str(REPO), **env)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "recipes.pretrain",
            "fit",
            "--config",
            "recipes/configs/pretrain/demo.yaml",
            "--trainer.logger",
            "false",
            "--trainer.callbacks",
            "null",
            *args,
        ],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_recipe_input_errors_come_without_the_lightning_traceback(tmp_path):
    manifest = tmp_path / "bad.jsonl"
    manifest.write_text(
        '{"audio": "/nowhere/gone.wav", "task": "asr", "text": "one", "audio_language": "en", '
        '"text_language": "en"}\n'
    )
    args = ("--data.train", f"[{manifest}]", "--trainer.default_root_dir", str(tmp_path))
    quiet = _recipe(*args)
    assert quiet.returncode == 1
    assert f"error: {manifest}:1: audio: file not found: /nowhere/gone.wav" in quiet.stderr
    assert "Traceback" not in quiet.stderr
    shown = _recipe(*args, "--print_traceback")  # QWEN_AUDIO_TRACEBACK=1: see the test above
    assert shown.returncode == 1 and "Traceback" in shown.stderr and "ManifestError" in shown.stderr


def test_recipe_names_a_truncated_ckpt_path(tmp_path):
    cut = tmp_path / "last.ckpt"
    cut.write_bytes(b"PK\x03\x04 half a zip")
    result = _recipe("--ckpt_path", str(cut), "--trainer.default_root_dir", str(tmp_path))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"error: --ckpt_path {cut}: truncated or not a checkpoint" in result.stderr


def test_recipe_names_an_empty_or_wholly_skipped_manifest(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"audio": "/nowhere/gone.wav", "task": "asr", "text": "one", "audio_language": "en", '
        '"text_language": "en"}\n'
    )
    no_eval = (
        "--data.val",
        "[]",
        "--data.test",
        "[]",
        "--trainer.limit_val_batches",
        "0",
        "--trainer.default_root_dir",
        str(tmp_path),
    )
    for args, message in [
        (("--data.train", f"[{empty}]"), f"error: {empty}: no entries: the file is empty\n"),
        (
            ("--data.train", f"[{bad}]", "--data.on_error", "skip"),
            f"error: data.train ['{bad}']: durations: no examples to sample\n",
        ),
        (
            ("--data.train", "[]"),
            "error: data.train: no file given, but the trainer asks for the train loader\n",
        ),
    ]:
        result = _recipe(*args, *no_eval)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert result.stderr.endswith(message)
