"""The released Qwen-Audio tokenizer on tiktoken, and the :class:`Tokenizer` protocol.

Token ids are the model's input contract. A checkpoint only works with the ids it was trained on.
The regular tokens come from a ``base64(token) rank`` file. That is the released ``qwen.tiktoken``,
or the small demo file built by ``scripts/build_demo_tokenizer.py``. The special tokens follow in
the released order. With the released file, every special token thus has its released id
(``<|endoftext|>`` 151643 ... ``</audio>`` 155164). With a file of ``n`` ranks, the same specials
start at ``n``.

Unlike the release, :meth:`QwenAudioTokenizer.encode` turns no text into special tokens unless the
caller names them in ``allowed_special``. A transcript that happens to contain ``<|en|>`` stays
text.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import importlib.resources
import os
import re
import unicodedata
import warnings
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Literal, Protocol

import tiktoken

from qwen_audio.lengths import AudioLengths, audio_lengths

PAT_STR = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""  # noqa: E501 (the release's pattern, verbatim)
RELEASED_SHA256 = "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186"
MODEL_MAX_LENGTH = 8192  # tokenizer_config.json of the release
DEMO_RANKS_FILE = Path(__file__).with_name("assets") / "demo.tiktoken"

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
AUDIO_PAD = "[[[AUDIO:modality]]]"
AUDIO_START = "<audio>"
AUDIO_END = "</audio>"
START_OF_TRANSCRIPT = "<|startoftranscript|>"
START_OF_ANALYSIS = "<|startofanalysis|>"
NO_TIMESTAMPS = "<|notimestamps|>"
TIMESTAMPS = "<|timestamps|>"
SILENCE = "<|sil|>"
UNKNOWN_LANGUAGE = "<|unknown|>"
LANGUAGES = ("en", "zh", "de", "es", "ko", "fr", "ja", "it")
MAX_TIMESTAMP_CS = 3000  # timestamps <|0.00|> ... <|30.00|> in centiseconds
TAG_LIKE = re.compile(r"<\|[^<>|\s]+\|>")


def timestamp_token(seconds: float) -> str:
    """``<|t|>`` for a time in [0, 30] s, rounded to the 0.01 s grid of the release."""
    centiseconds = round(seconds * 100)
    if not 0 <= centiseconds <= MAX_TIMESTAMP_CS:
        raise ValueError(f"timestamp {seconds!r} s is outside the released range 0.00 ... 30.00 s")
    return f"<|{centiseconds / 100:.2f}|>"


# Everything the release's AUDIO_ST tuple holds, in its order: these follow <|endoftext|>,
# <|im_start|>, <|im_end|> and <|extra_0..204|>, and are the specials the release lets text in chat
# turns turn into.
AUDIO_SPECIAL_TOKENS: tuple[str, ...] = (
    AUDIO_PAD,
    START_OF_TRANSCRIPT,
    START_OF_ANALYSIS,
    "<|translate|>",
    "<|transcribe|>",
    "<|caption|>",
    "<|keyword|>",
    UNKNOWN_LANGUAGE,
    *(f"<|{language}|>" for language in LANGUAGES),
    "<|zh_tr|>",
    NO_TIMESTAMPS,
    SILENCE,
    TIMESTAMPS,
    *(f"<|{centiseconds / 100:.2f}|>" for centiseconds in range(MAX_TIMESTAMP_CS + 1)),
    "<|caption_audiocaps|>",
    "<|caption_clotho|>",
    "<|audioset_ontology|>",
    "<|caption_plain|>",
    "<|itn|>",
    "<|wo_itn|>",
    "<|startofentityvalue|>",
    "<|endofentityvalue|>",
    "<|startofentitytype|>",
    "<|endofentitytype|>",
    "<|named_entity_recognition|>",
    "<|audio_grounding|>",
    "<|startofword|>",
    "<|endofword|>",
    "<|delim|>",
    "<|emotion_recognition|>",
    "<|music_description|>",
    "<|note_analysis|>",
    "<|pitch|>",
    *(f"<|midi_pitch_{i}|>" for i in range(128)),
    "<|velocity|>",
    *(f"<|midi_velocity_{i}|>" for i in range(128)),
    "<|sonic|>",
    "<|instrument|>",
    "<|speaker_meta|>",
    "<|song_meta|>",
    "<|question|>",
    "<|answer|>",
    "<|choice|>",
    "<|scene|>",
    "<|event|>",
    "<|vocal_classification|>",
    "<|speech_understanding|>",
    "<|scenario|>",
    "<|action|>",
    "<|entities|>",
    "<|speech_edit|>",
    AUDIO_START,
    AUDIO_END,
)
SPECIAL_TOKENS: tuple[str, ...] = (
    ENDOFTEXT,
    IM_START,
    IM_END,
    *(f"<|extra_{i}|>" for i in range(205)),
    *AUDIO_SPECIAL_TOKENS,
)
# Specials a task's output text may contain (timestamps, entity marks, MIDI notes ...): no audio
# markup.
TASK_TOKENS: frozenset[str] = frozenset(AUDIO_SPECIAL_TOKENS) - {AUDIO_PAD, AUDIO_START, AUDIO_END}

AllowedSpecial = AbstractSet[str] | Literal["all"]


class Tokenizer(Protocol):
    """What prompts, generation and serving need from a family's tokenizer.

    Both families implement it: :class:`QwenAudioTokenizer` and
    :class:`~qwen_audio.qwen2_audio.tokenizer.Qwen2AudioTokenizer`. ``family`` picks the task
    prompts and chat audio labels. ``audio_lengths`` is the family's length rule: it counts an
    audio's placeholders.
    """

    family: str
    name: str
    path: str | None
    special_tokens: dict[str, int]
    n_regular: int
    eod: int
    im_start: int
    im_end: int
    audio_pad: int
    audio_start: int
    audio_end: int
    stop_ids: tuple[int, ...]

    @property
    def n_vocab(self) -> int: ...

    def special_id(self, token: str) -> int: ...

    def encode(self, text: str, allowed_special: AllowedSpecial = frozenset()) -> list[int]: ...

    def decode(self, ids: Sequence[int], audio_sources: Sequence[str] | None = None) -> str: ...

    def audio_lengths(self, num_samples: int, source: str | None = None) -> AudioLengths: ...


class QwenAudioTokenizer:
    """Byte-level BPE (tiktoken) with the released split pattern.

    It also has NFC normalisation and special tokens.
    """

    family = "qwen-audio"  # the model family whose prompts (task tags, chat audio labels) this vocabulary encodes

    def __init__(
        self, mergeable_ranks: dict[bytes, int], name: str = "qwen_audio", path: str | None = None
    ) -> None:
        """``path``: the ranks file read, kept so a saved model folder can carry its tokenizer."""
        n_regular = len(mergeable_ranks)
        if not n_regular:
            raise ValueError(f"{name} holds no ranks")
        if sorted(mergeable_ranks.values()) != list(range(n_regular)):
            raise ValueError(f"ranks of {name} must be exactly 0 ... {n_regular - 1}, each once")
        self.name, self.path = name, path
        self.special_tokens = {
            token: n_regular + index for index, token in enumerate(SPECIAL_TOKENS)
        }
        self.encoding = tiktoken.Encoding(
            name,
            pat_str=PAT_STR,
            mergeable_ranks=mergeable_ranks,
            special_tokens=self.special_tokens,
        )
        self.n_regular = n_regular
        self.eod = self.special_tokens[ENDOFTEXT]
        self.im_start = self.special_tokens[IM_START]
        self.im_end = self.special_tokens[IM_END]
        self.audio_pad = self.special_tokens[AUDIO_PAD]
        self.audio_start = self.special_tokens[AUDIO_START]
        self.audio_end = self.special_tokens[AUDIO_END]
        self.stop_ids = (self.eod,)  # the release's base_generation_config.json
        self.first_timestamp = self.special_tokens["<|0.00|>"]
        self.last_timestamp = self.first_timestamp + MAX_TIMESTAMP_CS

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> QwenAudioTokenizer:
        """Load a ranks file of ``base64(token) rank`` lines.

        That is the format of the released ``qwen.tiktoken``.
        """
        path = os.fspath(path)
        with open(path, "rb") as file:
            return cls(_parse_ranks(file.read(), path), name=os.path.basename(path), path=path)

    @classmethod
    def released(cls) -> QwenAudioTokenizer:
        """The released vocabulary (n_vocab 155165).

        It is read from the ``qwen.tiktoken`` inside the dashscope wheel.

        The dashscope 2.0.2 wheel ships the exact file of the Qwen-Audio release. Its sha256 is
        checked, so a changed file cannot silently shift ids.
        """
        hint = "install the wheel that ships it: pip install dashscope==2.0.2"
        try:
            resource = importlib.resources.files("dashscope") / "resources" / "qwen.tiktoken"
            data = resource.read_bytes()
        except (ModuleNotFoundError, FileNotFoundError) as err:
            raise FileNotFoundError(
                f"the released qwen.tiktoken was not found ({err}); {hint}"
            ) from err
        digest = hashlib.sha256(data).hexdigest()
        if digest != RELEASED_SHA256:
            raise ValueError(
                f"{resource} has sha256 {digest}, not the released {RELEASED_SHA256}; {hint}"
            )
        return cls(_parse_ranks(data, str(resource)), name="qwen.tiktoken", path=str(resource))

    @classmethod
    def demo(cls) -> QwenAudioTokenizer:
        """The small real BPE in ``qwen_audio/assets/demo.tiktoken``, for tiny configs.

        It has 4096 ranks, n_vocab 7618.
        """
        return cls.from_file(DEMO_RANKS_FILE)

    @classmethod
    def load(cls, name: str | os.PathLike) -> QwenAudioTokenizer:
        """The tokenizer named ``"released"``, ``"demo"`` or the path of a ranks file.

        These are Qwen-Audio's values of ``QwenAudioConfig.tokenizer``.
        ``qwen_audio.checkpoint.load_tokenizer`` knows both families' values.
        """
        if name == "released":
            return cls.released()
        if name == "demo":
            return cls.demo()
        if not os.path.isfile(name):
            raise FileNotFoundError(
                f"tokenizer {os.fspath(name)!r} is neither 'released', 'demo' nor a ranks file"
            )
        return cls.from_file(name)

    @property
    def n_vocab(self) -> int:
        return self.encoding.n_vocab

    def special_id(self, token: str) -> int:
        """Id of a special token given by its surface form, e.g. ``special_id("<|en|>")``."""
        try:
            return self.special_tokens[token]
        except KeyError:
            raise ValueError(
                f"{token!r} is not a special token of the Qwen-Audio vocabulary"
            ) from None

    def timestamp_id(self, seconds: float) -> int:
        """Id of the timestamp token nearest to ``seconds`` (0.01 s grid, 0.00 ... 30.00)."""
        return self.special_tokens[timestamp_token(seconds)]

    def timestamp_seconds(self, token_id: int) -> float | None:
        """Seconds a timestamp id stands for, or None when the id is not a timestamp."""
        if self.first_timestamp <= token_id <= self.last_timestamp:
            return (token_id - self.first_timestamp) / 100
        return None

    def encode(self, text: str, allowed_special: AllowedSpecial = frozenset()) -> list[int]:
        """NFC-normalise and encode.

        Only the special tokens named in ``allowed_special`` ("all" for every one) are recognised.
        Any other special-token text is encoded as the plain text it is.
        """
        text = unicodedata.normalize("NFC", text)
        if allowed_special != "all":
            allowed_special = frozenset(allowed_special)
        if allowed_special:
            self._warn_unknown_tags(text)
        return self.encoding.encode(text, allowed_special=allowed_special, disallowed_special=())

    def _warn_unknown_tags(self, text: str) -> None:
        """Warn about tag-like text that is no special token, such as the typo ``<|xx|>``.

        Such text stays text, as in the release, so parity holds. But where the caller reads tags
        from text, it most likely meant a tag, so this says so.
        """
        for tag in sorted(set(TAG_LIKE.findall(text)) - self.special_tokens.keys()):
            warnings.warn(
                f"{tag} in the prompt is not a special token of the Qwen-Audio vocabulary; it is encoded "
                f"as plain text",
                stacklevel=3,
            )

    def decode(self, ids: Sequence[int], audio_sources: Sequence[str] | None = None) -> str:
        """Text of ``ids``. With ``audio_sources``, each expanded audio span (``<audio>``,
        placeholders, ``</audio>``) is written back as ``<audio>SOURCE</audio>``, as the release's
        decoder does."""
        ids = list(map(int, ids))
        n_vocab = self.n_vocab
        if ids and not (
            min(ids) >= 0 and max(ids) < n_vocab
        ):  # one C pass: streams decode every token
            token_id = next(token_id for token_id in ids if not 0 <= token_id < n_vocab)
            raise ValueError(f"token id {token_id} is outside the vocabulary [0, {n_vocab})")
        if audio_sources is not None:
            ids = self._restore_audio_sources(ids, audio_sources)
        return self.encoding.decode(ids, errors="replace")

    audio_lengths = staticmethod(audio_lengths)  # the release's rule: samples // 160 mel frames

    def _audio_tag_pairs(self, ids: Sequence[int]) -> list[tuple[int, int]]:
        """(index of ``<audio>``, index of its ``</audio>``) for each audio.

        Unmatched tags raise ValueError.
        """
        pairs = []
        start = None
        for index, token_id in enumerate(ids):
            if token_id == self.audio_start and start is None:
                start = index
            elif token_id == self.audio_end:
                if start is None:
                    raise ValueError(f"</audio> at token {index} has no opening <audio>")
                pairs.append((start, index))
                start = None
        if start is not None:
            raise ValueError(f"<audio> at token {start} is never closed by </audio>")
        return pairs

    def _restore_audio_sources(self, ids: list[int], sources: Sequence[str]) -> list[int]:
        pairs = self._audio_tag_pairs(ids)
        if len(pairs) != len(sources):
            raise ValueError(
                f"ids hold {len(pairs)} audio spans but {len(sources)} audio_sources were given"
            )
        out: list[int] = []
        position = 0
        for (start, stop), source in zip(pairs, sources):
            out.extend(ids[position : start + 1])
            out.extend(self.encode(source))
            position = stop
        out.extend(ids[position:])
        return out

    def __repr__(self) -> str:
        return f"QwenAudioTokenizer({self.name!r}, n_vocab={self.n_vocab})"


def _parse_ranks(data: bytes, name: str) -> dict[bytes, int]:
    ranks = {}
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except (ValueError, binascii.Error) as err:
            raise ValueError(
                f"{name}:{number}: expected 'base64(token) rank', got {line[:80]!r} ({err})"
            ) from err
    return ranks
