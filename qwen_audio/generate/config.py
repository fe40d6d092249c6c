"""Picking each new token: :class:`GenerationConfig`, with the release's base and chat settings."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from qwen_audio.tokenizer import QwenAudioTokenizer


@dataclass(frozen=True)
class GenerationConfig:
    """How to pick each new token. ``stop_ids`` end a row's generation and are not returned.

    Sampling options apply only with ``do_sample``. A ``top_k`` of 0 or a ``top_p`` of 1.0 switches
    that filter off. ``seed`` makes sampling reproducible. It seeds a ``torch.Generator`` of its own
    and leaves the global RNG alone.

    The hallucination guard stops a row and flags it. It is off by default, and off for the parity
    tests. It fires when a row's output ends with one n-gram (n <= 8) repeated more than
    ``max_repeats`` times, a loop such as "two two two ...". It also fires when the output holds
    more than ``max_tokens_per_audio_second`` tokens per second of its prompt's audio. Such a
    transcript is longer than its audio can hold. Whisper's compression-ratio check guards against
    the same.
    """

    max_new_tokens: int = 512
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    stop_ids: tuple[int, ...] = ()
    seed: int | None = None
    max_repeats: int = 0
    max_tokens_per_audio_second: float = 0.0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(
                f"min_new_tokens must lie in [0, max_new_tokens={self.max_new_tokens}], "
                f"got {self.min_new_tokens}"
            )
        if not 0 < self.temperature < float("inf"):
            raise ValueError(
                f"temperature must be a positive finite number, got {self.temperature}"
            )
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1] (1 = off), got {self.top_p}")
        if not 0 < self.repetition_penalty < float("inf"):
            raise ValueError(
                f"repetition_penalty must be a positive finite number (1 = off), got "
                f"{self.repetition_penalty}"
            )
        if any(not isinstance(i, int) or i < 0 for i in self.stop_ids):
            raise ValueError(f"stop_ids must be non-negative token ids, got {self.stop_ids!r}")
        if self.seed is not None and self.seed < 0:
            raise ValueError(f"seed must be >= 0 or None, got {self.seed}")
        if self.max_repeats < 0:
            raise ValueError(f"max_repeats must be >= 0 (0 = off), got {self.max_repeats}")
        if not 0 <= self.max_tokens_per_audio_second < float("inf"):
            raise ValueError(
                f"max_tokens_per_audio_second must be >= 0 (0 = off), got "
                f"{self.max_tokens_per_audio_second}"
            )

    @classmethod
    def base(cls, tokenizer: QwenAudioTokenizer, **overrides) -> GenerationConfig:
        """The release's ``base_generation_config.json`` (Qwen-Audio).

        It samples with top-p 0.8 and stops at eod.

        Its evaluation scripts decode greedily instead:
        ``GenerationConfig.base(tokenizer, do_sample=False)``.
        """
        release = cls(
            max_new_tokens=512, do_sample=True, top_k=0, top_p=0.8, stop_ids=tokenizer.stop_ids
        )
        return dataclasses.replace(release, **overrides)

    @classmethod
    def chat(cls, tokenizer: QwenAudioTokenizer, **overrides) -> GenerationConfig:
        """The release's ``chat_generation_config.json`` (Qwen-Audio-Chat): sampling with top-p 0.5.

        It stops at ``<|im_end|>`` or ``<|im_start|>`` (its stop words) or eod (its eos).
        """
        stops = (tokenizer.im_end, tokenizer.im_start, tokenizer.eod)
        release = cls(max_new_tokens=512, do_sample=True, top_k=0, top_p=0.5, stop_ids=stops)
        return dataclasses.replace(release, **overrides)
