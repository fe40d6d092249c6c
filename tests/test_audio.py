"""Audio front end against independent references: openai-whisper, transformers'
WhisperFeatureExtractor, analytic float64 signals, torch's own conv/pool arithmetic, and hand-worked
lengths."""

import numpy as np
import pytest
import soundfile
import torch
import whisper
from transformers import WhisperFeatureExtractor

from qwen_audio.audio import (
    SAMPLE_RATE,
    AudioError,
    load_audio,
    log_mel_spectrogram,
    pad_or_trim,
    spec_augment,
)
from qwen_audio.lengths import N_SAMPLES, audio_lengths
from qwen_audio.whisper_mel import mel_filters


def _signals(rate: int, seconds: float, seed: int = 0) -> dict[str, np.ndarray]:
    """Tones, a chirp, noise and a speech-like AM signal (float64 formulas) at ``rate``."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    voice = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 20))
    syllables = 0.5 * (1 + np.sin(2 * np.pi * 4 * t)) * (t % 0.6 < 0.45)
    return {
        "tone": 0.5 * np.sin(2 * np.pi * 440 * t),
        "chirp": 0.3 * np.sin(2 * np.pi * (100 * t + 0.5 * (3900 / seconds) * t**2)),
        "noise": 0.1 * rng.standard_normal(t.size),
        "speech_like": 0.05 * voice * syllables + 0.001 * rng.standard_normal(t.size),
    }


def _whisper_mel(audio: torch.Tensor) -> torch.Tensor:
    return whisper.log_mel_spectrogram(audio.float())


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
@pytest.mark.parametrize("fmt", ["WAV", "FLAC"])
def test_loaded_files_give_whispers_log_mel(tmp_path, rate, fmt):
    for name, signal in _signals(rate, 1.3).items():
        path = tmp_path / f"{name}.{fmt.lower()}"
        soundfile.write(path, signal, rate, format=fmt, subtype="PCM_16")
        audio = load_audio(path)
        assert audio.dtype == torch.float32 and audio.dim() == 1
        assert abs(audio.numel() - round(1.3 * SAMPLE_RATE)) <= 1
        ours = log_mel_spectrogram(audio)
        assert ours.shape == (80, audio.numel() // 160)
        torch.testing.assert_close(ours, _whisper_mel(audio), atol=1e-4, rtol=0)


def test_resampled_tone_matches_the_analytic_tone(tmp_path):
    t44 = np.arange(44100) / 44100
    soundfile.write(tmp_path / "a.wav", 0.5 * np.sin(2 * np.pi * 440 * t44), 44100, subtype="FLOAT")
    audio = load_audio(tmp_path / "a.wav").double().numpy()
    t16 = np.arange(audio.size) / SAMPLE_RATE
    expected = 0.5 * np.sin(2 * np.pi * 440 * t16)
    interior = slice(200, -200)  # the sinc filter's edges see the signal's ends
    np.testing.assert_allclose(audio[interior], expected[interior], atol=2e-3)


def test_stereo_is_averaged(tmp_path):
    rate = 16000
    t = np.arange(rate) / rate
    left, right = 0.5 * np.sin(2 * np.pi * 300 * t), 0.25 * np.sin(2 * np.pi * 1000 * t)
    soundfile.write(tmp_path / "s.wav", np.stack([left, right], axis=1), rate, subtype="FLOAT")
    np.testing.assert_allclose(
        load_audio(tmp_path / "s.wav").numpy(), (left + right) / 2, atol=1e-6
    )


@pytest.mark.parametrize("fmt,ext", [("OGG", "ogg"), ("MP3", "mp3")])
def test_lossy_formats_decode_to_the_tone(tmp_path, fmt, ext):
    rate = 44100
    t = np.arange(rate) / rate
    soundfile.write(tmp_path / f"t.{ext}", 0.5 * np.sin(2 * np.pi * 1000 * t), rate, format=fmt)
    audio = load_audio(tmp_path / f"t.{ext}").numpy()
    spectrum = np.abs(np.fft.rfft(audio))
    peak_hz = np.argmax(spectrum) * SAMPLE_RATE / audio.size
    assert abs(peak_hz - 1000) < 3


def test_mel_filters_equal_whispers_shipped_filters():
    for n_mels in (80, 128):
        torch.testing.assert_close(
            mel_filters(n_mels), whisper.audio.mel_filters("cpu", n_mels), atol=1e-6, rtol=1e-5
        )


def test_thirty_second_clips_match_whisper_and_transformers():
    extractor = WhisperFeatureExtractor(feature_size=80)
    for name, signal in _signals(SAMPLE_RATE, 7.0).items():
        audio = pad_or_trim(torch.from_numpy(signal).float())
        ours = log_mel_spectrogram(audio)
        assert ours.shape == (80, 3000)
        torch.testing.assert_close(ours, _whisper_mel(audio), atol=1e-4, rtol=0)
        hf = extractor(
            signal.astype(np.float32), sampling_rate=SAMPLE_RATE, return_tensors="np"
        ).input_features[0]
        torch.testing.assert_close(ours, torch.from_numpy(hf), atol=1e-4, rtol=0, msg=name)


def test_batch_normalises_each_example_by_its_own_maximum():
    quiet = torch.from_numpy(0.001 * _signals(SAMPLE_RATE, 2.0)["speech_like"]).float()
    loud = torch.from_numpy(_signals(SAMPLE_RATE, 2.0)["chirp"]).float()
    batch = log_mel_spectrogram(torch.stack([quiet, loud]))
    for row, clip in zip(batch, (quiet, loud), strict=True):
        torch.testing.assert_close(row, _whisper_mel(clip), atol=1e-4, rtol=0)
    # Whisper on the stacked batch uses one maximum: the quiet clip then differs from running it
    # alone.
    assert (
        whisper.log_mel_spectrogram(torch.stack([quiet, loud]))[0] - _whisper_mel(quiet)
    ).abs().max() > 0.1


def test_batch_of_thirty_second_clips_equals_whisper_clip_by_clip():
    """The DataLoader's case: each row within 1e-5 of openai-whisper on its clip.

    Each row is also bit-equal to its clip alone.
    """
    clips = torch.stack(
        [torch.from_numpy(signal).float() for signal in _signals(SAMPLE_RATE, 30.0).values()]
    )
    batch = log_mel_spectrogram(clips)
    assert batch.shape == (4, 80, 3000)
    for row, clip in zip(batch, clips, strict=True):
        torch.testing.assert_close(row, _whisper_mel(clip), atol=1e-5, rtol=0)
        assert torch.equal(row, log_mel_spectrogram(clip))


def test_non_finite_or_integer_audio_is_rejected():
    with pytest.raises(ValueError, match="NaN or infinite"):
        log_mel_spectrogram(torch.tensor([0.0, float("nan")] * 800))
    with pytest.raises(ValueError, match="floating point"):
        log_mel_spectrogram(torch.zeros(1600, dtype=torch.int16))
    with pytest.raises(ValueError, match="150 samples is too short"):
        log_mel_spectrogram(torch.zeros(150))
    with pytest.raises(ValueError, match="backend"):
        log_mel_spectrogram(torch.zeros(1600), kernel_backend="cuda-magic")


@pytest.mark.parametrize(
    "seconds,mel,encoder,tokens",
    [(0.02, 2, 1, 0), (1.0, 100, 50, 25), (29.99, 2999, 1500, 750), (30.0, 3000, 1500, 750)],
)
def test_lengths_of_hand_worked_clips(seconds, mel, encoder, tokens):
    lengths = audio_lengths(round(seconds * SAMPLE_RATE))
    assert (lengths.mel_frames, lengths.encoder_frames, lengths.audio_tokens) == (
        mel,
        encoder,
        tokens,
    )
    assert lengths.span_tokens == tokens + 2


def test_audio_over_thirty_seconds_is_truncated_with_a_warning():
    with pytest.warns(UserWarning, match=r"long\.wav lasts 45\.00 s"):
        lengths = audio_lengths(45 * SAMPLE_RATE, source="long.wav")
    counts = (lengths.samples, lengths.mel_frames, lengths.encoder_frames, lengths.audio_tokens)
    assert counts == (N_SAMPLES, 3000, 1500, 750)


def test_lengths_agree_with_torch_conv_and_pool_arithmetic():
    conv = torch.nn.Conv1d(1, 1, kernel_size=3, stride=2, padding=1)
    pool = torch.nn.AvgPool1d(2, 2)
    for samples in [160, 320, 479, 480, 481, 12345, 16000, 99999, 479840, 480000]:
        lengths = audio_lengths(samples)
        if (
            samples > 200
        ):  # shorter clips are too short for the centred STFT (whisper fails on them too)
            assert log_mel_spectrogram(torch.zeros(samples) + 1e-3).shape[-1] == lengths.mel_frames
        frames = conv(torch.zeros(1, 1, lengths.mel_frames)).shape[-1]
        assert frames == lengths.encoder_frames
        pooled = pool(torch.zeros(1, 1, frames)).shape[-1] if frames >= 2 else 0
        assert pooled == lengths.audio_tokens


def test_pad_or_trim():
    audio = torch.arange(10.0)
    assert torch.equal(pad_or_trim(audio, 4), audio[:4])
    assert torch.equal(pad_or_trim(audio, 12), torch.cat([audio, torch.zeros(2)]))
    batch = torch.ones(2, 3, 5)
    assert pad_or_trim(batch, 7, axis=1).shape == (2, 7, 5)
    assert pad_or_trim(batch, 2).shape == (2, 3, 2)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.wav"):
        load_audio(tmp_path / "nope.wav")


def test_bad_files_raise_audio_error_naming_the_file(tmp_path):
    (tmp_path / "garbage.wav").write_bytes(b"this is not audio at all" * 10)
    (tmp_path / "empty.flac").write_bytes(b"")
    soundfile.write(tmp_path / "zero.wav", np.zeros(0), 16000)
    soundfile.write(
        tmp_path / "nan.wav", np.array([0.1, np.nan, 0.2] * 100), 16000, subtype="FLOAT"
    )
    for name, message in [
        ("garbage.wav", "cannot decode"),
        ("empty.flac", "cannot decode"),
        ("zero.wav", "no samples"),
        ("nan.wav", "NaN"),
    ]:
        with pytest.raises(AudioError, match=message) as info:
            load_audio(tmp_path / name)
        assert name in str(info.value)
        assert isinstance(info.value, ValueError)


def test_clips_under_30_ms_are_refused_naming_the_file(tmp_path):
    """480 samples at 16 kHz (30 ms) give 3 mel frames, 2 encoder frames and 1 audio token.

    479 give none.
    """
    assert audio_lengths(480).audio_tokens == 1 and audio_lengths(479).audio_tokens == 0
    for rate, samples in [(16000, 480), (8000, 240)]:
        soundfile.write(tmp_path / "ok.wav", np.full(samples, 0.1), rate)
        assert load_audio(tmp_path / "ok.wav").numel() == 480
        soundfile.write(tmp_path / "short.wav", np.full(samples - 1, 0.1), rate)
        with pytest.raises(
            AudioError, match=r"short.wav lasts 29.9 ms, shorter than the 30 ms the encoder needs"
        ):
            load_audio(tmp_path / "short.wav")


def test_spec_augment_keeps_masks_inside_valid_frames():
    mel = torch.randn(3, 80, 400)
    lengths = torch.tensor([400, 60, 5])
    for seed in range(50):
        out = spec_augment(mel, lengths, generator=torch.Generator().manual_seed(seed))
        masked = out != mel
        assert torch.equal(out[masked], torch.zeros(int(masked.sum())))
        for b, length in enumerate(lengths.tolist()):
            rows = masked[b].all(dim=1).nonzero().flatten()  # fully masked mel bins
            cols = (masked[b].sum(dim=0) == 80).nonzero().flatten()  # fully masked frames
            if rows.numel():
                assert rows.numel() <= 27 and rows.max() - rows.min() + 1 == rows.numel()
            if cols.numel():
                assert cols.max() < length and cols.numel() <= min(100, length)
                assert cols.max() - cols.min() + 1 == cols.numel()
            assert not masked[b, :, length:].any()
    same = spec_augment(mel, lengths, generator=torch.Generator().manual_seed(7))
    assert torch.equal(same, spec_augment(mel, lengths, generator=torch.Generator().manual_seed(7)))


def test_spec_augment_masks_wide_bands_on_average():
    mel = torch.randn(64, 80, 300)
    out = spec_augment(mel, torch.full((64,), 300), generator=torch.Generator().manual_seed(0))
    frames_masked = ((out != mel).sum(dim=1) == 80).sum(dim=1).float()
    assert 40 < frames_masked.mean() < 60  # width ~ U{0..100}: mean 50


@pytest.mark.parametrize("samples", [201, 1000, 16123, 33333, 479700, 480000])
def test_encoder_input_of_a_short_clip_is_whispers_30_second_log_mel(samples):
    """audio_features transforms only the clip and N_FFT samples of padding.

    By contrast whisper pads every clip to 30 s.
    """
    from qwen_audio.audio import audio_features

    audio = 0.1 * torch.randn(samples, generator=torch.Generator().manual_seed(samples))
    audio[: samples // 3] = 0.0  # leading silence: the maximum lies in the later frames
    mel, mel_length = audio_features(audio, "clip.wav")
    assert mel_length == samples // 160
    reference = whisper.log_mel_spectrogram(whisper.pad_or_trim(audio))
    torch.testing.assert_close(mel, reference[:, : mel.shape[1]], atol=1e-5, rtol=0)
    assert mel.shape[1] == min(
        3000, 2 * ((mel_length - 1) // 2 + 1) + 1
    )  # the frames an encoder may read
