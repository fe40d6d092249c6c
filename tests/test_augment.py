"""On-the-fly augmentation: each transform against a formula or a hand-worked case; the seeding."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile
import torch

from qwen_audio.data.augment import (
    Augment,
    Augmenter,
    Draw,
    example_generator,
    noise_stretch,
    read_audio_list,
    rescale_times,
)
from qwen_audio.data.dataset import AudioTextDataset, AugmentedConcatDataset
from qwen_audio.data.manifest import ManifestEntry, ManifestError
from qwen_audio.prompts import TimedWord
from qwen_audio.tokenizer import QwenAudioTokenizer

RATE = 16000


def _tone(hz: float, seconds: float) -> torch.Tensor:
    return (
        0.5
        * torch.sin(
            2 * torch.pi * hz * torch.arange(int(seconds * RATE), dtype=torch.float64) / RATE
        ).float()
    )


@pytest.fixture
def noise_manifest(tmp_path):
    """Two white-noise clips (0.5 s, 2 s) in a manifest, one path relative and one absolute."""
    rng = np.random.default_rng(0)
    soundfile.write(tmp_path / "short.wav", rng.normal(0, 0.1, RATE // 2).astype(np.float32), RATE)
    soundfile.write(tmp_path / "long.wav", rng.normal(0, 0.1, 2 * RATE).astype(np.float32), RATE)
    path = tmp_path / "noise.jsonl"
    path.write_text(
        json.dumps({"audio": "short.wav", "kind": "white"})
        + "\n"
        + json.dumps({"audio": str(tmp_path / "long.wav")})
        + "\n"
    )
    return str(path)


def _entry(seconds: float, words=None, task="srwt") -> ManifestEntry:
    return ManifestEntry("a.wav", task, "one two", "en", "en", duration=seconds, words=words)


def test_noise_is_mixed_at_the_drawn_snr(noise_manifest):
    augmenter = Augmenter.from_config(Augment(noise=noise_manifest, noise_prob=1.0))
    clean = _tone(300, 1.2)
    for index, snr in ((0, 5.0), (1, 17.5)):
        _, mixed = augmenter.apply(
            Draw(noise=index, noise_start=0.3, snr_db=snr), _entry(1.2), clean
        )
        noise = (mixed - clean).double()
        measured = 10 * np.log10((clean.double() ** 2).sum() / (noise**2).sum())
        assert measured == pytest.approx(snr, abs=1e-3)


def test_noise_stretch_repeats_a_short_clip_from_its_start_fraction():
    noise = torch.arange(4.0)
    assert noise_stretch(noise, 7, 0.5).tolist() == [2, 3, 0, 1, 2, 3, 0]
    assert noise_stretch(noise, 2, 0.0).tolist() == [0, 1]


def test_speed_shortens_the_audio_raises_its_pitch_and_scales_the_word_times():
    """Factor 1.1 on 1.1 s: 1.0 s, a 440 Hz tone at 484 Hz, a word at 0.55-0.88 s at 0.5-0.8 s."""
    entry = _entry(1.1, (TimedWord("one", 0.0, 0.33), TimedWord("two", 0.55, 0.88)))
    augmenter = Augmenter(Augment(speed_prob=1.0))
    faster, audio = augmenter.apply(Draw(speed=1.1), entry, _tone(440, 1.1))
    assert len(audio) == RATE
    spectrum = np.abs(np.fft.rfft(audio.numpy() * np.hanning(len(audio))))
    assert np.argmax(spectrum) * RATE / len(audio) == pytest.approx(484, abs=1.0)
    assert faster.duration == pytest.approx(1.0)
    assert faster.words == (TimedWord("one", 0.0, 0.3), TimedWord("two", 0.5, 0.8))
    entry = _entry(0.9, (TimedWord("one", 0.0, 0.33), TimedWord("two", 0.45, 0.72)))
    slower, audio = augmenter.apply(Draw(speed=0.9), entry, _tone(440, 0.9))
    assert len(audio) == RATE and slower.words == (
        TimedWord("one", 0.0, 0.367),
        TimedWord("two", 0.5, 0.8),
    )


def test_rescale_keeps_word_ends_inside_the_new_duration_and_drops_the_offset():
    entry = ManifestEntry(
        "a.wav",
        "srwt",
        "one",
        "en",
        "en",
        offset=2.0,
        duration=1.0,
        words=(TimedWord("one", 0.4, 1.0),),
    )
    scaled = rescale_times(
        entry, 1.0, 0.9999
    )  # the end, 0.9999 rounded to the millisecond, would pass it
    assert (
        scaled.offset == 0.0
        and scaled.duration == 0.9999
        and scaled.words == (TimedWord("one", 0.4, 0.9999),)
    )


def test_gain_scales_the_rms_by_the_decibel_formula():
    clean = _tone(300, 0.5)
    _, louder = Augmenter(Augment(gain_prob=1.0)).apply(Draw(gain_db=-6.0), _entry(0.5), clean)
    assert (louder.double().norm() / clean.double().norm()).item() == pytest.approx(
        10 ** (-6 / 20), rel=1e-5
    )


def test_reverberation_is_the_convolution_with_the_normalised_response(tmp_path):
    rng = np.random.default_rng(1)
    response = (rng.normal(size=800) * np.exp(-np.arange(800) / 150)).astype(np.float32)
    soundfile.write(tmp_path / "room.wav", response, RATE, subtype="FLOAT")
    (tmp_path / "rir.jsonl").write_text(json.dumps({"audio": "room.wav"}) + "\n")
    augmenter = Augmenter.from_config(Augment(rir=str(tmp_path / "rir.jsonl"), rir_prob=1.0))
    clean = _tone(300, 0.25)
    _, wet = augmenter.apply(Draw(rir=0), _entry(0.25), clean)
    expected = np.convolve(clean.numpy().astype(np.float64), response / np.linalg.norm(response))[
        : len(clean)
    ]
    np.testing.assert_allclose(wet.numpy(), expected, atol=1e-5)


def test_draws_follow_the_probabilities_and_the_tasks(noise_manifest):
    augmenter = Augmenter.from_config(
        Augment(speed_prob=0.5, noise=noise_manifest, noise_prob=0.25)
    )
    draws = [augmenter.draw("asr", example_generator(0, 0, i)) for i in range(2000)]
    speeds = [d.speed for d in draws if d is not None and d.speed is not None]
    assert len(speeds) / 2000 == pytest.approx(0.5, abs=0.04)
    assert sum(d is not None and d.noise is not None for d in draws) / 2000 == pytest.approx(
        0.25, abs=0.03
    )
    assert set(speeds) == {0.9, 1.0, 1.1}
    assert {d.noise for d in draws if d is not None and d.noise is not None} == {0, 1}
    assert all(5.0 <= d.snr_db <= 20.0 for d in draws if d is not None and d.noise is not None)
    assert sum(d is None for d in draws) / 2000 == pytest.approx(0.5 * 0.75, abs=0.04)
    assert augmenter.draw("mna", example_generator(0, 0, 0)) is None  # not a speech task


def test_generator_depends_on_seed_epoch_and_index_only():
    first = torch.rand(3, generator=example_generator(3, 1, 7))
    assert torch.equal(first, torch.rand(3, generator=example_generator(3, 1, 7)))
    for other in ((4, 1, 7), (3, 2, 7), (3, 1, 8)):
        assert not torch.equal(first, torch.rand(3, generator=example_generator(*other)))


def test_dataset_serves_the_same_augmented_example_in_any_order_and_caches_only_unchanged_ones(
    tmp_path, noise_manifest
):
    rng = np.random.default_rng(2)
    entries = []
    for i in range(6):
        soundfile.write(tmp_path / f"c{i}.wav", rng.normal(0, 0.2, RATE).astype(np.float32), RATE)
        entries.append(
            ManifestEntry(str(tmp_path / f"c{i}.wav"), "asr", "one", "en", "en", duration=1.0)
        )
    augmenter = Augmenter.from_config(Augment(speed_prob=0.5, noise=noise_manifest, noise_prob=0.5))
    tokenizer = QwenAudioTokenizer.demo()

    def dataset():
        return AugmentedConcatDataset(
            [
                AudioTextDataset(entries[:4], tokenizer, cache=True, augmenter=augmenter),
                AudioTextDataset(entries[4:], tokenizer, cache=True, augmenter=augmenter),
            ],
            seed=5,
        )

    forward, backward = dataset(), dataset()
    keys = [(epoch, i) for epoch in (0, 1) for i in range(6)]
    ahead = {key: forward[key] for key in keys}
    behind = {key: backward[key] for key in reversed(keys)}
    for key in keys:
        assert torch.equal(ahead[key].mels[0], behind[key].mels[0]), key
    assert any(
        not torch.equal(ahead[0, i].mels[0], ahead[1, i].mels[0]) for i in range(6)
    )  # a new draw per epoch
    unchanged = [i for i in range(6) if augmenter.draw("asr", example_generator(5, 1, i)) is None]
    clean = [AudioTextDataset(entries, tokenizer)[i].mels[0] for i in range(6)]
    for i in range(6):
        assert torch.equal(ahead[1, i].mels[0], clean[i]) == (i in unchanged), i
    cached = {
        i for d, offset in zip(forward.datasets, (0, 4)) for i in (k + offset for k in d._cache)
    }
    assert cached == {
        i
        for i in range(6)
        if any(augmenter.draw("asr", example_generator(5, e, i)) is None for e in (0, 1))
    }


@pytest.mark.parametrize(
    "line, message",
    [
        ("not json", "noise.jsonl:2: not JSON"),
        (json.dumps({"path": "a.wav"}), "noise.jsonl:2: audio: a line needs an 'audio' path"),
        (json.dumps({"audio": "a.wav", "snr": 3}), r"noise.jsonl:2: unknown field\(s\) \['snr'\]"),
    ],
)
def test_bad_noise_manifest_lines_are_named(tmp_path, line, message):
    path = tmp_path / "noise.jsonl"
    path.write_text(json.dumps({"audio": "a.wav"}) + "\n" + line + "\n")
    with pytest.raises(ManifestError, match=message):
        read_audio_list(str(path))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(noise_prob=0.5), "no data.augment.noise manifest"),
        (dict(speed_prob=1.5), "speed_prob must be in"),
        (dict(snr_db=(20.0, 5.0)), "snr_db must be"),
        (dict(speeds=[0.0, 1.0]), "speeds must be positive"),
    ],
)
def test_bad_configs_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Augment(**kwargs)
