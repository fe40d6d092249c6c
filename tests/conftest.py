"""Shared test setup: CUDA-marked tests skip cleanly without a GPU; the released and demo tokenizers."""

import pytest
import torch

from qwen_audio.tokenizer import QwenAudioTokenizer


def pytest_collection_modifyitems(config, items):
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
