"""Loading a manifest example: audio that only decoding shows unusable is an error naming the
manifest line and the file, or, with ``on_error: skip``, a stand-in that adds nothing to the
loss."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import soundfile
import torch

from qwen_audio.audio import load_audio
from qwen_audio.config import QwenAudioConfig
from qwen_audio.data.collate import collate
from qwen_audio.data.dataset import SKIPPED, AudioTextDataset
from qwen_audio.data.manifest import read_manifest
from qwen_audio.errors import AudioError
from qwen_audio.model import QwenAudio
from qwen_audio.prompts import IGNORE_INDEX

BAD_AUDIO = {  # what the file holds -> what the error says (the header of each reads fine)
    "nan": (np.full(8000, np.nan, np.float32), "contains NaN or infinite samples"),
    "inf": (
        np.concatenate([np.zeros(7999, np.float32), [np.inf]]).astype(np.float32),
        "contains NaN or infinite samples",
    ),
    "silent": (np.zeros(8000, np.float32), "is silent: every sample of the clip is 0"),
}


def manifest_with(tmp_path, kind: str):
    """Line 1 a good 0.5 s clip, line 2 the ``kind`` clip; the manifest is read.

    Its header checks pass.
    """
    rng = np.random.default_rng(0)
    soundfile.write(tmp_path / "good.wav", rng.normal(0, 0.1, 8000).astype(np.float32), 16000)
    bad = tmp_path / f"{kind}.wav"
    soundfile.write(
        bad,
        BAD_AUDIO[kind][0] if kind in BAD_AUDIO else np.ones(8000, np.float32) * 0.1,
        16000,
        subtype="FLOAT",
    )
    path = tmp_path / "m.jsonl"
    line = '{{"audio": "{}", "task": "asr", "text": "one", "audio_language": "en", "text_language": "en"}}\n'
    path.write_text(line.format("good.wav") + line.format(bad.name))
    entries = read_manifest(path, check_audio=True)
    if kind == "garbled":  # the file changes on disk after the manifest was read
        bad.write_bytes(b"RIFF not a wav any more")
    return path, bad, entries


@pytest.mark.parametrize(
    "kind, reason",
    [(k, r) for k, (_, r) in BAD_AUDIO.items()] + [("garbled", "cannot decode audio file")],
)
def test_unusable_audio_names_the_manifest_line_and_the_file(tmp_path, demo, kind, reason):
    path, bad, entries = manifest_with(tmp_path, kind)
    dataset = AudioTextDataset(entries, demo)
    assert dataset[0].task == "asr"
    with pytest.raises(AudioError) as info:
        dataset[1]
    assert str(info.value).startswith(f"{path}:2: audio: ") and str(bad) in str(info.value)
    assert reason in str(info.value)


def test_skip_replaces_the_example_by_a_stand_in_that_adds_nothing_to_the_loss(tmp_path, demo):
    path, bad, entries = manifest_with(tmp_path, "nan")
    dataset = AudioTextDataset(entries, demo, on_error="skip")
    with pytest.warns(UserWarning, match=rf"^skipped: {path}:2: audio: .*nan.wav contains NaN"):
        stand_in = dataset[1]
    assert (
        stand_in.task == SKIPPED and stand_in.mels == [] and (stand_in.labels == IGNORE_INDEX).all()
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = dataset[1]
    assert torch.equal(
        again.input_ids, stand_in.input_ids
    )  # the same stand-in every time: resume replays it
    torch.manual_seed(0)
    model = QwenAudio(QwenAudioConfig.from_name("tiny")).eval()

    def loss(samples):
        batch = collate(samples, demo.eod)
        return model(
            batch["input_ids"],
            batch["audio_mel"],
            batch["audio_mel_lengths"],
            attention_mask=batch["attention_mask"],
            labels=batch["labels"],
        ).loss

    with torch.no_grad():
        assert loss([dataset[0], stand_in]).item() == pytest.approx(
            loss([dataset[0]]).item(), rel=1e-5
        )


def test_cache_serves_the_first_load_and_decodes_each_file_once(tmp_path, demo, monkeypatch):
    """A cached dataset gives the samples an uncached one gives.

    It decodes each entry once over two epochs.
    """
    path, _, entries = manifest_with(tmp_path, "loud")
    fresh = [AudioTextDataset(entries, demo)[i] for i in range(2)]
    decoded = []
    monkeypatch.setattr(
        "qwen_audio.data.dataset.load_audio", lambda p: decoded.append(p) or load_audio(p)
    )
    cached = AudioTextDataset(entries, demo, cache=True)
    for _ in range(2):  # two epochs
        for index, expected in enumerate(fresh):
            sample = cached[index]
            assert torch.equal(sample.input_ids, expected.input_ids) and torch.equal(
                sample.labels, expected.labels
            )
            assert (
                torch.equal(sample.mels[0], expected.mels[0])
                and sample.mel_lengths == expected.mel_lengths
            )
    assert sorted(decoded) == sorted(e.audio for e in entries)
    AudioTextDataset(entries, demo)[0]
    assert len(decoded) == 3  # without the cache every access decodes again
