"""Qwen2-Audio's tokenizer (``tokenizer.json``, read by ``tokenizers``) as a :class:`Tokenizer`.

An audio is ``<|audio_bos|>`` + N x ``<|AUDIO|>`` + ``<|audio_eos|>``. N follows transformers'
``Qwen2AudioProcessor`` (:func:`feature_lengths`). Text between special tokens is encoded piece by
piece, as the HF tokenizer does around its added tokens. A raw prompt therefore encodes to the ids
transformers gives it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer

from qwen_audio.lengths import AudioLengths, audio_lengths, conv_frames, pooled_frames
from qwen_audio.tokenizer import AllowedSpecial
from qwen_audio.whisper_mel import HOP_LENGTH

TOKENIZER_JSON = "tokenizer.json"
GENERATION_CONFIG = "generation_config.json"
DEMO_TOKENIZER_FILE = (
    Path(__file__).resolve().parent.parent / "assets" / "qwen2_demo_tokenizer.json"
)
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
AUDIO_PAD, AUDIO_BOS, AUDIO_EOS = "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"
SPECIAL_TOKENS = (
    ENDOFTEXT,
    IM_START,
    IM_END,
    AUDIO_PAD,
    AUDIO_BOS,
    AUDIO_EOS,
)  # the release's order from 151643


def feature_lengths(num_samples: int, source: str | None = None) -> AudioLengths:
    """Qwen2AudioProcessor's lengths of a clip of ``num_samples`` samples.

    WhisperFeatureExtractor pads the clip to 30 s. Longer clips lose the rest, with a warning. It
    marks ``ceil(samples / 160)`` mel frames valid (Qwen-Audio: ``samples // 160``). Then come the
    conv stem and the pool, as in :func:`qwen_audio.lengths.audio_lengths`. A 1 s clip + 1 sample
    gives 101 mel frames, 51 encoder frames and 25 audio tokens."""
    samples = audio_lengths(num_samples, source).samples  # the truncation and its warning
    mel = -(-samples // HOP_LENGTH)
    encoder = conv_frames(mel)
    return AudioLengths(samples, mel, encoder, pooled_frames(encoder))


class Qwen2AudioTokenizer:
    """A ``tokenizers.Tokenizer`` with the family's six special tokens.

    It also holds the stop ids of its checkpoint.
    """

    family = "qwen2-audio"  # picks the family's task prompts and chat audio labels

    def __init__(
        self, tokenizer: Tokenizer, path: str, stop_ids: Sequence[int] | None = None
    ) -> None:
        self.tokenizer, self.path, self.name = tokenizer, path, os.path.basename(path)
        self.tokenizer.encode_special_tokens = (
            True  # specials are split out by encode(), never found in text pieces
        )
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        missing = [token for token in SPECIAL_TOKENS if token not in vocab]
        if missing:
            raise ValueError(f"{path}: tokenizer lacks the Qwen2-Audio special tokens {missing}")
        self.special_tokens = {
            t.content: i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special
        }
        self.eod, self.im_start, self.im_end = (vocab[t] for t in (ENDOFTEXT, IM_START, IM_END))
        self.audio_pad, self.audio_start, self.audio_end = (
            vocab[t] for t in (AUDIO_PAD, AUDIO_BOS, AUDIO_EOS)
        )
        self.stop_ids = tuple(stop_ids) if stop_ids else (self.eod,)
        self.n_regular = min(self.special_tokens.values())
        by_length = sorted(self.special_tokens, key=len, reverse=True)
        self._special_pattern = re.compile("|".join(re.escape(t) for t in by_length))

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Qwen2AudioTokenizer:
        """The tokenizer of a ``tokenizer.json``.

        The ``generation_config.json`` beside it, if any, gives the stop ids (eos_token_id)."""
        path = os.fspath(path)
        try:
            tokenizer = Tokenizer.from_file(path)
        except Exception as err:  # tokenizers raises a bare Exception for unreadable files
            raise ValueError(f"cannot read tokenizer file {path}: {err}") from err
        generation = os.path.join(os.path.dirname(path), GENERATION_CONFIG)
        stop_ids = None
        if os.path.isfile(generation):
            with open(generation, encoding="utf-8") as f:
                eos = json.load(f).get("eos_token_id")
            if eos is not None and not all(
                isinstance(i, int) for i in ([eos] if isinstance(eos, int) else eos)
            ):
                raise ValueError(
                    f"{generation}: eos_token_id {eos!r} must be an id or a list of ids"
                )
            stop_ids = [eos] if isinstance(eos, int) else eos
        return cls(tokenizer, path, stop_ids)

    @classmethod
    def demo(cls) -> Qwen2AudioTokenizer:
        """The demo BPE's 4096 ranks + the six special tokens (4102 ids), committed for the
        ``qwen2-audio-tiny`` preset."""
        return cls.from_file(DEMO_TOKENIZER_FILE)

    @property
    def n_vocab(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def special_id(self, token: str) -> int:
        try:
            return self.special_tokens[token]
        except KeyError:
            raise ValueError(f"{token!r} is not a special token of {self.path}") from None

    def encode(self, text: str, allowed_special: AllowedSpecial = frozenset()) -> list[int]:
        """Ids of ``text``.

        Only the special tokens in ``allowed_special`` ("all": every one) are special."""
        ids: list[int] = []
        position = 0
        for match in self._special_pattern.finditer(text):
            if allowed_special == "all" or match.group() in allowed_special:
                ids.extend(self._encode_plain(text[position : match.start()]))
                ids.append(self.special_tokens[match.group()])
                position = match.end()
        return ids + self._encode_plain(text[position:])

    def _encode_plain(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids if text else []

    def decode(self, ids: Sequence[int], audio_sources: Sequence[str] | None = None) -> str:
        """Text of ``ids``.

        With ``audio_sources``, each audio span is written back as ``<audio>SOURCE</audio>``."""
        ids = [int(i) for i in ids]
        for token_id in ids:
            if not 0 <= token_id < self.n_vocab:
                raise ValueError(
                    f"token id {token_id} is outside the vocabulary [0, {self.n_vocab})"
                )
        if audio_sources is None:
            return self.tokenizer.decode(ids, skip_special_tokens=False)
        pieces, position, sources = [], 0, list(audio_sources)
        for start, stop in self._spans(ids):
            if not sources:
                raise ValueError(
                    f"ids hold more audio spans than the {len(audio_sources)} audio_sources given"
                )
            pieces += [
                self.tokenizer.decode(ids[position:start], skip_special_tokens=False),
                f"<audio>{sources.pop(0)}</audio>",
            ]
            position = stop
        if sources:
            raise ValueError(
                f"ids hold fewer audio spans than the {len(audio_sources)} audio_sources given"
            )
        return "".join(pieces) + self.tokenizer.decode(ids[position:], skip_special_tokens=False)

    def _spans(self, ids: Sequence[int]) -> list[tuple[int, int]]:
        starts = [i for i, t in enumerate(ids) if t == self.audio_start]
        return [(start, ids.index(self.audio_end, start) + 1) for start in starts]

    audio_lengths = staticmethod(feature_lengths)  # the family's length rule

    def __repr__(self) -> str:
        return f"Qwen2AudioTokenizer({self.name!r}, n_vocab={self.n_vocab})"
