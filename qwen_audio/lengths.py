"""The released model's length rule: samples -> mel frames -> encoder frames -> audio tokens.

Plain arithmetic, apart from the front end that computes features, so that the tokenizers can
count placeholders without importing it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from qwen_audio.whisper_mel import HOP_LENGTH, SAMPLE_RATE

CHUNK_LENGTH = 30  # seconds the encoder sees at most
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE  # 480000
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 mel frames per 30 s
MIN_SAMPLES = 480  # 30 ms, the shortest clip: 3 mel frames -> 2 conv frames -> 1 audio token


def conv_frames(mel_frames):
    """Encoder frames after the conv stem (stride 2): ``(mel_frames - 1) // 2 + 1``.

    Takes ints or tensors.
    """
    return (mel_frames - 1) // 2 + 1


def pooled_frames(encoder_frames):
    """Audio tokens after the stride-2 pool: ``(encoder_frames - 2) // 2 + 1``.

    That is 0 for 0 or 1 frame.
    """
    return (encoder_frames - 2) // 2 + 1


@dataclass(frozen=True)
class AudioLengths:
    """Lengths of one clip at each stage of the model.

    ``span_tokens`` adds the two markers."""

    samples: int
    mel_frames: int
    encoder_frames: int
    audio_tokens: int

    @property
    def span_tokens(self) -> int:
        return self.audio_tokens + 2


def audio_lengths(num_samples: int, source: str | None = None) -> AudioLengths:
    """Length bookkeeping of the release for a clip of ``num_samples`` samples at 16 kHz.

    Audio longer than 30 s is truncated to its first 30 s, as the release does (with a warning
    naming ``source``).

    Worked example, a 1 s clip: 16000 samples // 160 = 100 mel frames. The stride-2 conv gives
    (100 - 1) // 2 + 1 = 50 frames. The pool gives (50 - 2) // 2 + 1 = 25 audio tokens. So the
    prompt holds 25 + 2 = 27 positions (~40 ms per token)::

        >>> audio_lengths(16000)
        AudioLengths(samples=16000, mel_frames=100, encoder_frames=50, audio_tokens=25)
    """
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    if num_samples > N_SAMPLES:
        warnings.warn(
            f"audio {source or '<tensor>'} lasts {num_samples / SAMPLE_RATE:.2f} s; the model reads "
            f"only its first {CHUNK_LENGTH} s (truncated, as in the release)",
            stacklevel=2,
        )
    samples = min(num_samples, N_SAMPLES)
    mel = samples // HOP_LENGTH
    encoder = conv_frames(mel)
    return AudioLengths(samples, mel, encoder, pooled_frames(encoder))
