"""Shared test setup: CUDA-marked tests skip cleanly without a GPU, SLURM-marked ones run only with
``-m slurm``; the released and demo tokenizers; a server started on a free port."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
import torch

from qwen_audio.tokenizer import QwenAudioTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytest_collection_modifyitems(config, items):
    if "slurm" not in config.getoption(
        "markexpr"
    ):  # minutes of cluster jobs: only when asked for, with -m slurm
        config.hook.pytest_deselected(
            items=[item for item in items if item.get_closest_marker("slurm")]
        )
        items[:] = [item for item in items if not item.get_closest_marker("slurm")]
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def released() -> QwenAudioTokenizer:
    """The released vocabulary (qwen.tiktoken from the dashscope wheel, sha256-checked)."""
    return QwenAudioTokenizer.released()


@pytest.fixture(scope="session")
def demo() -> QwenAudioTokenizer:
    """The small committed demo vocabulary."""
    return QwenAudioTokenizer.demo()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _server(checkpoint: str, log: str, *options: str) -> Iterator[str]:
    """``python -m qwen_audio.serve --checkpoint CHECKPOINT --device cpu OPTIONS`` on a free port,
    its output in ``log``: yields its URL once ``/health`` answers ok, and stops it (and its
    inference worker) afterwards."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    with open(log, "w") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "qwen_audio.serve",
                "--checkpoint",
                checkpoint,
                "--port",
                str(port),
                "--device",
                "cpu",
                *options,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=os.path.dirname(log),
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert process.poll() is None, f"the server exited: {open(log).read()}"
            assert time.monotonic() < deadline, (
                f"the server did not become healthy: {open(log).read()}"
            )
            try:
                if httpx.get(f"{url}/health", timeout=5).text == "ok":
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the server and the inference worker it started
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="session")
def serve_checkpoint():
    """``with serve_checkpoint(checkpoint, log, *options) as url:`` a running server.

    See :func:`_server`.
    """
    return _server
