"""The files of a Qwen2-Audio folder besides weights and ``config.json``.

They are the tokenizer, the feature extractor and the stop ids.

A folder that was loaded passes its ``tokenizer.json``, and every companion file next to it is
copied as is, so a fine-tuned model keeps the release's chat template and generation settings.
Missing ones are written with the values of the release's front end (``WhisperFeatureExtractor``, 16
kHz, 30 s windows) and the tokenizer's stop ids.
"""

from __future__ import annotations

import json
import os
import shutil

from qwen_audio.audio import N_FFT, SAMPLE_RATE
from qwen_audio.config import QwenAudioConfig
from qwen_audio.lengths import CHUNK_LENGTH, N_FRAMES, N_SAMPLES
from qwen_audio.qwen2_audio.tokenizer import (
    DEMO_TOKENIZER_FILE,
    GENERATION_CONFIG,
    TOKENIZER_JSON,
    Qwen2AudioTokenizer,
)
from qwen_audio.whisper_mel import HOP_LENGTH

PREPROCESSOR_CONFIG = "preprocessor_config.json"
COMPANIONS = (
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "chat_template.json",
    "chat_template.jinja",
    PREPROCESSOR_CONFIG,
    GENERATION_CONFIG,
)


def write_side_files(
    folder: str, config: QwenAudioConfig, tokenizer_file: str | os.PathLike | None
) -> None:
    """Write ``tokenizer.json`` (``tokenizer_file``, or the config's demo tokenizer), its
    companions, and the feature-extractor and generation configs when the source folder has none."""
    if tokenizer_file is None:
        if config.tokenizer != "qwen2-demo":
            raise ValueError(
                f"saving {config.name} needs tokenizer_file (the tokenizer.json it was loaded with)"
            )
        tokenizer_file = DEMO_TOKENIZER_FILE
    tokenizer_file = os.fspath(tokenizer_file)
    shutil.copyfile(tokenizer_file, os.path.join(folder, TOKENIZER_JSON))
    source = os.path.dirname(tokenizer_file)
    for name in COMPANIONS:
        if os.path.isfile(os.path.join(source, name)):
            shutil.copyfile(os.path.join(source, name), os.path.join(folder, name))
    if not os.path.isfile(os.path.join(folder, PREPROCESSOR_CONFIG)):
        _write_json(
            os.path.join(folder, PREPROCESSOR_CONFIG),
            {
                "feature_extractor_type": "WhisperFeatureExtractor",
                "processor_class": "Qwen2AudioProcessor",
                "feature_size": config.encoder.n_mels,
                "sampling_rate": SAMPLE_RATE,
                "hop_length": HOP_LENGTH,
                "chunk_length": CHUNK_LENGTH,
                "n_fft": N_FFT,
                "n_samples": N_SAMPLES,
                "nb_max_frames": N_FRAMES,
                "padding_side": "right",
                "padding_value": 0.0,
                "return_attention_mask": True,
            },
        )
    if not os.path.isfile(os.path.join(folder, GENERATION_CONFIG)):
        tokenizer = Qwen2AudioTokenizer.from_file(tokenizer_file)
        _write_json(
            os.path.join(folder, GENERATION_CONFIG),
            {
                "bos_token_id": tokenizer.eod,
                "eos_token_id": list(tokenizer.stop_ids),
                "pad_token_id": tokenizer.eod,
            },
        )


def check_preprocessor_config(folder: str | os.PathLike, config: QwenAudioConfig) -> None:
    """Refuse a ``preprocessor_config.json`` whose front end is not what this library computes."""
    path = os.path.join(folder, PREPROCESSOR_CONFIG)
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        values = json.load(f)
    expected = {
        "feature_size": config.encoder.n_mels,
        "sampling_rate": SAMPLE_RATE,
        "hop_length": HOP_LENGTH,
        "n_fft": N_FFT,
        "chunk_length": CHUNK_LENGTH,
    }
    for key, value in expected.items():
        if values.get(key, value) != value:
            raise ValueError(
                f"{path}: {key}={values[key]!r} is not supported (the model's front end uses {value!r})"
            )


def _write_json(path: str, value: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2)
