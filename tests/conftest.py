"""Shared test setup: CUDA-marked tests skip cleanly without a GPU, SLURM-marked ones run only with ``-m slurm``;
the released and demo tokenizers."""

import pytest
import torch

from qwen_audio.tokenizer import QwenAudioTokenizer


def pytest_collection_modifyitems(config, items):
    if "slurm" not in config.getoption("markexpr"):  # minutes of cluster jobs: only when asked for, with -m slurm
        config.hook.pytest_deselected(items=[item for item in items if item.get_closest_marker("slurm")])
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
