"""The audio of a prompt: clips beside the token ids, and their encoder input.

A prompt's ids hold each audio as an opening marker, placeholders and a closing marker. The
waveform travels beside the ids in a :class:`Clip`, never through the tokenizer. :func:`featurize`
turns clips into the log-mel the encoder reads; training batches, generation and the server all
call it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from qwen_audio.audio import audio_features

AudioLoader = Mapping[str, torch.Tensor] | Callable[[str], torch.Tensor]


class Recording(NamedTuple):
    """A 16 kHz mono waveform a caller holds, and the name that errors and decoded prompts use."""

    waveform: torch.Tensor
    source: str


@dataclass(frozen=True)
class Clip:
    """One audio of a prompt: its waveform and source name, and where its span sits in the ids.

    ``ids[start]`` is the opening marker and ``ids[stop - 1]`` the closing one. The model
    overwrites the embeddings of ``ids[start:stop]`` with the encoder's output. ``mel_frames`` is
    the number of valid mel frames, counted by the family's length rule.
    """

    source: str
    start: int
    stop: int
    mel_frames: int
    waveform: torch.Tensor = field(compare=False, repr=False)

    @property
    def num_samples(self) -> int:
        return self.waveform.shape[-1]

    @property
    def audio_tokens(self) -> int:
        """Number of placeholders (encoder frames) between the two markers."""
        return self.stop - self.start - 2


def check_audio_features(clips: Sequence[Clip], feature_tokens: Sequence[int]) -> None:
    """Raise ValueError unless each clip's placeholders match the frames of its encoder output.

    A mismatch means the features came from other audio, or another length rule, than the
    prompt. Splicing would then shift every later token.
    """
    if len(clips) != len(feature_tokens):
        raise ValueError(
            f"the prompt holds {len(clips)} audios but features were given for {len(feature_tokens)}"
        )
    for index, (clip, frames) in enumerate(zip(clips, feature_tokens)):
        if clip.audio_tokens != int(frames):
            raise ValueError(
                f"audio {index} ({clip.source}): the prompt holds {clip.audio_tokens} placeholder "
                f"tokens but its encoder features have {int(frames)} frames"
            )


def featurize(clips: Sequence[Clip], n_mels: int = 80) -> tuple[list[torch.Tensor], list[int]]:
    """The encoder input of each clip: its log-mel ``[n_mels, frames]`` and its valid mel length."""
    features = [
        audio_features(clip.waveform, clip.source, n_mels, clip.mel_frames) for clip in clips
    ]
    return [mel for mel, _ in features], [length for _, length in features]
