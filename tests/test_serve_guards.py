"""The server guards itself (``qwen_audio/serve/guards.py``), through the real ``openai`` client and
raw HTTP: the API key (401, ``/health`` open), the body limit (413 before the body is read), the
chat audio limit (400 naming the part, transcriptions keep long audio), SIGTERM (refuses new
requests, finishes the one in flight, exits 0) and no process of the server outliving it, after
SIGTERM and after SIGKILL, by listing its process tree."""

from __future__ import annotations

import base64
import glob
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import soundfile
import torch

from qwen_audio.checkpoint import save_pretrained
from qwen_audio.config import QwenAudioConfig
from qwen_audio.model import QwenAudio
from qwen_audio.tokenizer import DEMO_RANKS_FILE

REPO = Path(__file__).resolve().parents[1]
KEY = "sk-test-guard"


def descendants(pid: int) -> set[int]:
    """Every living process under ``pid``, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(stat.split("/")[2]))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Server:
    """``python -m qwen_audio.serve`` on a free port, in a session of its own."""

    def __init__(self, checkpoint: Path, log: Path, *options: str) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.url, self.log, self.name = f"http://127.0.0.1:{port}", log, checkpoint.name
        with open(log, "w") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "qwen_audio.serve",
                    "--checkpoint",
                    str(checkpoint),
                    "--port",
                    str(port),
                    "--device",
                    "cpu",
                    *options,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)},
                start_new_session=True,
            )
        deadline = time.monotonic() + 240
        while True:
            assert self.process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            try:
                if httpx.get(f"{self.url}/health", timeout=5).text == "ok":
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)

    def client(self, key: str = KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=120)

    def close(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def wav(path: Path, seconds: float) -> Path:
    rng = np.random.default_rng(0)
    soundfile.write(
        path, (0.1 * rng.standard_normal(round(16000 * seconds))).astype(np.float32), 16000
    )
    return path


def audio_part(path: Path) -> dict:
    data = base64.b64encode(path.read_bytes()).decode()
    return {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("guards") / "tiny-guarded"
    torch.manual_seed(0)
    save_pretrained(
        QwenAudio(QwenAudioConfig.from_name("tiny")), folder, tokenizer_file=DEMO_RANKS_FILE
    )
    return folder


@pytest.fixture(scope="module")
def guarded(checkpoint):
    server = Server(
        checkpoint,
        checkpoint.parent / "guarded.log",
        "--api-key",
        KEY,
        "--max-request-mb",
        "1",
        "--max-audio-seconds",
        "2",
        "--shutdown-timeout",
        "120",
    )
    yield server
    server.close()


def ask(server: Server, content, key: str = KEY, **options):
    return server.client(key).chat.completions.create(
        model=server.name,
        messages=[{"role": "user", "content": content}],
        temperature=0,
        **{"max_tokens": 4, **options},
    )


def test_without_the_api_key_a_401_in_openai_form_and_health_stays_open(guarded):
    with pytest.raises(openai.AuthenticationError) as refused:
        ask(guarded, "hello", key="sk-wrong")
    assert refused.value.status_code == 401 and refused.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        guarded.client("sk-wrong").models.list()
    assert httpx.post(f"{guarded.url}/v1/audio/transcriptions").status_code == 401  # no key at all
    assert httpx.get(f"{guarded.url}/health").text == "ok"
    assert [m.id for m in guarded.client().models.list().data] == [guarded.name]
    assert ask(guarded, "hello").choices[0].finish_reason in ("stop", "length")


def test_a_body_over_the_limit_gets_a_413_before_it_is_read(guarded):
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    url = f"{guarded.url}/v1/chat/completions"
    declared = httpx.post(url, content=b" " * (2 * 2**20), headers=headers, timeout=60)
    assert declared.status_code == 413, declared.text
    assert declared.json()["error"]["code"] == "request_too_large"

    def chunks():  # no Content-Length: the limit is met while the body streams in
        for _ in range(20):
            yield b" " * 2**16

    streamed = httpx.post(url, content=chunks(), headers=headers, timeout=60)
    assert streamed.status_code == 413, streamed.text
    assert ask(guarded, "still serving").choices  # the server goes on


def test_chat_audio_over_the_limit_gets_a_400_naming_the_part_and_transcriptions_keep_long_audio(
    guarded, tmp_path
):
    long, short = wav(tmp_path / "long.wav", 3.0), wav(tmp_path / "short.wav", 1.0)
    with pytest.raises(openai.BadRequestError) as refused:
        ask(guarded, [{"type": "text", "text": "what is it?"}, audio_part(long)])
    assert refused.value.param == "messages[0].content[1].input_audio.data"
    assert (
        "lasts 3.0 s, longer than this server's limit of 2 s (--max-audio-seconds)"
        in refused.value.message
    )
    assert ask(guarded, [{"type": "text", "text": "what is it?"}, audio_part(short)]).choices
    with long.open("rb") as file:
        transcript = guarded.client().audio.transcriptions.create(
            model=guarded.name, file=file, language="en", response_format="verbose_json"
        )
    assert transcript.duration == pytest.approx(3.0)


def test_sigterm_refuses_new_requests_finishes_the_stream_in_flight_and_exits_0(guarded):
    processes = descendants(guarded.process.pid)
    assert len(processes) >= 2, processes  # LitServe's manager and inference worker at least
    stream = guarded.client().chat.completions.create(
        model=guarded.name,
        messages=[{"role": "user", "content": "count"}],
        temperature=0,
        max_tokens=400,
        stream=True,
    )
    chunks = iter(stream)
    first = next(chunks)  # the role: the job is queued
    os.kill(guarded.process.pid, signal.SIGTERM)
    rest: list = []
    reader = threading.Thread(target=lambda: rest.extend(chunks))
    reader.start()
    time.sleep(1)
    with pytest.raises((openai.APIStatusError, openai.APIConnectionError)) as refused:
        ask(guarded, "too late")
    if isinstance(refused.value, openai.APIStatusError):
        assert refused.value.status_code == 503
    reader.join(timeout=120)
    assert first.choices[0].delta.role == "assistant"
    assert rest and rest[-1].choices[0].finish_reason in (
        "stop",
        "length",
    )  # the stream in flight finished
    assert guarded.process.wait(timeout=60) == 0, guarded.log.read_text()[-3000:]
    deadline = time.monotonic() + 10
    while [p for p in processes if alive(p)] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in processes if alive(p)], guarded.log.read_text()[-3000:]


def test_after_sigkill_no_process_of_the_server_is_left(checkpoint):
    server = Server(checkpoint, checkpoint.parent / "killed.log")
    try:
        processes = descendants(server.process.pid)
        assert len(processes) >= 2, processes
        server.process.send_signal(signal.SIGKILL)  # the main process only, as an OOM killer would
        server.process.wait()
        deadline = time.monotonic() + 10
        while [p for p in processes if alive(p)] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [p for p in processes if alive(p)]
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{server.url}/health", timeout=5)
    finally:
        server.close()
