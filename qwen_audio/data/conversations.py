"""Conversation JSONL for supervised fine-tuning (stage 2), its validation, and its dataset.

Each line holds one ChatML dialogue. Validation errors name the file, line and field. The dataset
encodes the conversations and puts loss on the assistant's words only.

A line looks like::

    {"id": "pair-3", "system": "You are a helpful assistant.",
     "messages": [{"role": "user", "content": [{"audio": "clips/a.wav"}, {"audio": "clips/b.wav"},
                                               {"text": "Which one is speech?"}]},
                  {"role": "assistant", "content": "Audio 2 is speech."},
                  {"role": "user", "content": "What does it say?"},
                  {"role": "assistant", "content": "the cat sleeps."}]}

Fields: ``messages`` (required) alternate ``user`` and ``assistant``, start with the user and end
with the assistant's reply. A user turn is text, or a list of ``{"audio": path}`` /
``{"text": ...}`` items. It is written as the release's ``from_list_format`` does:
``Audio 1:<audio>PATH</audio>\\n``, numbered from 1 in each turn. With a Qwen2-Audio tokenizer, it
follows its chat template's ``Audio 1: <audio>PATH</audio>\\n``, numbered across the conversation.
An assistant turn is text. ``system`` (optional) replaces the default system prompt. ``id``
(optional) defaults to ``file:line``. A pure-text conversation is the same schema without audio
items. Audio paths are read against the file's folder, so a corpus folder can be moved. Text may not
hold ``<audio>`` tags, as audio comes only as items. Unknown fields are errors, so a misspelt field
cannot be silently ignored.

Labels are ``IGNORE_INDEX`` everywhere except each assistant turn's content *and its closing*
``<|im_end|>``. This is how Qwen and FastChat train chat models. The model learns to stop, and
generation ends at ``<|im_end|>`` (spec §7). The system prompt, user turns (audio included), role
headers and the newlines between turns carry no loss.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import soundfile
import torch
from torch.utils.data import Dataset

from qwen_audio.audio import SAMPLE_RATE, AudioSource
from qwen_audio.clips import AudioLoader, featurize
from qwen_audio.data.dataset import Sample, load_clip, stored_file
from qwen_audio.data.manifest import MAX_SECONDS, MIN_SECONDS, TIME_TOLERANCE, ManifestError
from qwen_audio.errors import AudioError, InputError
from qwen_audio.prompts import Example, Message, encode_chat
from qwen_audio.tokenizer import AUDIO_END, AUDIO_START, Tokenizer

ROLES = ("user", "assistant")
_FIELDS = ("id", "system", "messages")


@dataclass(frozen=True)
class Conversation:
    """One dialogue, named by ``source`` (``file:line``) in errors raised while it is encoded.

    ``stored`` is set for a conversation read from a shard (:mod:`qwen_audio.data.shard`). It
    returns the bytes of its audio files by path. It is called when the conversation is encoded, so
    memory holds no corpus's audio.
    """

    id: str
    messages: tuple[Message, ...]
    system: str | None = None
    source: str | None = None
    stored: Callable[[], Mapping[str, bytes]] | None = field(
        default=None, compare=False, repr=False
    )

    @property
    def audios(self) -> list[str]:
        return [
            item["audio"]
            for m in self.messages
            if not isinstance(m.content, str)
            for item in m.content
            if "audio" in item
        ]

    def to_json(self) -> dict[str, Any]:
        line: dict[str, Any] = {"id": self.id}
        if self.system is not None:
            line["system"] = self.system
        line["messages"] = [
            {
                "role": m.role,
                "content": m.content if isinstance(m.content, str) else list(m.content),
            }
            for m in self.messages
        ]
        return line

    def loader(self, load: Callable[[AudioSource], Any]) -> Callable[[str], Any]:
        """``load`` of an audio path: of its file, or of its stored bytes.

        The stored bytes are used when the conversation comes from a shard.
        """
        if self.stored is None:
            return load
        return lambda path: load(stored_file(self.stored()[path], path))

    def encode(
        self, tokenizer: Tokenizer, max_length: int, load: AudioLoader | None = None
    ) -> Example:
        """ChatML ids and labels (:func:`qwen_audio.prompts.encode_chat`).

        Errors name the conversation. Audio that only decoding shows unusable (NaN/inf, silence) is
        an :class:`AudioError`. The file check reads headers, so it cannot see such audio. ``load``
        says how audio paths become waveforms (by default :func:`load_clip`, through
        :meth:`loader`).
        """
        system = [Message("system", self.system)] if self.system is not None else []
        where = self.source or f"conversation {self.id!r}"
        try:
            load = self.loader(load_clip) if load is None else load
            return encode_chat(
                tokenizer, [*system, *self.messages], load=load, max_length=max_length
            )
        except AudioError as err:
            raise AudioError(f"{where}: {err}") from None
        except (ValueError, OSError) as err:
            raise InputError(f"{where}: {err}") from err


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ManifestError(f"must be non-empty text, got {value!r}", field=field)
    if AUDIO_START in value or AUDIO_END in value:
        raise ManifestError(
            f'holds an {AUDIO_START} tag; give audio as an {{"audio": path}} item', field=field
        )
    return value


def _audio(value: Any, field: str, folder: str, check_audio: bool) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ManifestError(f"must be a non-empty path, got {value!r}", field=field)
    path = os.path.normpath(os.path.join(folder, os.path.expanduser(value)))
    if check_audio:
        if not os.path.isfile(path):
            raise ManifestError(f"file not found: {path}", field=field)
        try:
            seconds = soundfile.info(path).duration
        except (soundfile.LibsndfileError, RuntimeError) as err:
            raise ManifestError(f"cannot read {path}: {err}", field=field) from None
        if not MIN_SECONDS <= seconds <= MAX_SECONDS + TIME_TOLERANCE:
            raise ManifestError(
                f"{path} lasts {seconds:.4f} s; a clip must last {MIN_SECONDS * 1000:.0f} ms to "
                f"{MAX_SECONDS:.0f} s",
                field=field,
            )
    return path


def _content(
    value: Any, role: str, field: str, folder: str, check_audio: bool
) -> str | tuple[dict[str, str], ...]:
    if isinstance(value, str) or role == "assistant":
        return _text(value, field)
    if not isinstance(value, list) or not value:
        raise ManifestError(
            f"must be text or a non-empty list of audio/text items, got {value!r}", field=field
        )
    items = []
    for index, item in enumerate(value):
        where = f"{field}[{index}]"
        if not isinstance(item, dict) or len(item) != 1 or not {"audio", "text"} & set(item):
            raise ManifestError(
                f'must be {{"audio": path}} or {{"text": ...}}, got {item!r}', field=where
            )
        if "audio" in item:
            items.append({"audio": _audio(item["audio"], f"{where}.audio", folder, check_audio)})
        else:
            items.append({"text": _text(item["text"], f"{where}.text")})
    return tuple(items)


def parse_conversation(line: Any, folder: str, check_audio: bool, default_id: str) -> Conversation:
    """A decoded JSON line -> :class:`Conversation`.

    Otherwise :class:`ManifestError` names the bad field.
    """
    if not isinstance(line, dict):
        raise ManifestError(f"must be a JSON object, got {type(line).__name__}")
    for name in line:
        if name not in _FIELDS:
            raise ManifestError(f"unknown field (known: {', '.join(_FIELDS)})", field=name)
    conversation_id = line.get("id", default_id)
    if not isinstance(conversation_id, str) or not conversation_id:
        raise ManifestError(f"must be a non-empty string, got {conversation_id!r}", field="id")
    system = _text(line["system"], "system") if "system" in line else None
    messages = line.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ManifestError(
            f"must be a non-empty list of turns, got {messages!r}", field="messages"
        )
    parsed = []
    for index, message in enumerate(messages):
        field = f"messages[{index}]"
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            raise ManifestError(
                f"must be an object with exactly role and content, got {message!r}", field=field
            )
        role, expected = message["role"], ROLES[index % 2]
        if role not in ROLES:
            hint = (
                " (a system prompt goes in the top-level 'system' field)"
                if role == "system"
                else ""
            )
            raise ManifestError(
                f"unknown role {role!r}; roles are user and assistant{hint}", field=f"{field}.role"
            )
        if role != expected:
            raise ManifestError(
                f"is {role!r}, expected {expected!r}: turns alternate user, assistant, starting with "
                "the user",
                field=f"{field}.role",
            )
        parsed.append(
            Message(
                role, _content(message["content"], role, f"{field}.content", folder, check_audio)
            )
        )
    if parsed[-1].role != "assistant":
        raise ManifestError(
            f"missing assistant turn: the last turn (messages[{len(parsed) - 1}]) is the user's, "
            "with no reply to learn",
            field="messages",
        )
    return Conversation(conversation_id, tuple(parsed), system, default_id)


def _decode(raw: str) -> Any:
    try:
        return json.loads(raw.rstrip("\r\n"))
    except json.JSONDecodeError as err:
        raise ManifestError(f"malformed JSON: {err.msg} (column {err.colno})") from None


def read_conversations(path: str | os.PathLike, *, check_audio: bool = True) -> list[Conversation]:
    """Every conversation of a JSONL file (blank lines ignored).

    The first bad line raises :class:`ManifestError` reading ``path:line: field: reason``. With
    ``check_audio``, each audio file must exist and be readable.
    """
    name = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(name))
    conversations = []
    with open(name, encoding="utf-8") as file:
        for number, raw in enumerate(file, start=1):
            if not raw.strip():
                continue
            try:
                conversations.append(
                    parse_conversation(_decode(raw), folder, check_audio, f"{name}:{number}")
                )
            except ManifestError as err:
                raise err.at(name, number) from None
    if not conversations:
        raise ManifestError("no conversations: the file is empty", path=name)
    return conversations


def write_conversations(path: str | os.PathLike, conversations: Iterable[Conversation]) -> None:
    """Write one conversation a line.

    Audio paths are written as stored (relative paths resolve against the file's folder).
    """
    with open(path, "w", encoding="utf-8") as file:
        for conversation in conversations:
            file.write(json.dumps(conversation.to_json(), ensure_ascii=False) + "\n")


def _header_length(path: AudioSource) -> torch.Tensor:
    """Zeros as long as the file's audio at 16 kHz, from its header.

    That is enough to count its placeholders.
    """
    info = soundfile.info(path)
    return torch.zeros(round(info.frames * SAMPLE_RATE / info.samplerate))


def token_length(conversation: Conversation, tokenizer: Tokenizer, max_length: int) -> int:
    """The conversation's length in tokens, audio placeholders included, decoding no audio."""
    return len(
        conversation.encode(tokenizer, max_length, load=conversation.loader(_header_length)).ids
    )


class ConversationDataset(Dataset):
    """Map-style dataset of conversations -> :class:`Sample`.

    The pretraining collate function batches the samples. ``task`` is ``chat`` with audio, ``text``
    without.
    """

    def __init__(
        self,
        conversations: Sequence[Conversation],
        tokenizer: Tokenizer,
        max_length: int = 2048,
        n_mels: int = 80,
    ) -> None:
        self.conversations, self.tokenizer, self.max_length, self.n_mels = (
            conversations,
            tokenizer,
            max_length,
            n_mels,
        )

    def __len__(self) -> int:
        return len(self.conversations)

    def __getitem__(self, index: int) -> Sample:
        example = self.conversations[index].encode(self.tokenizer, self.max_length)
        mels, mel_lengths = featurize(example.clips, self.n_mels)
        task = "chat" if example.clips else "text"
        ids, labels = torch.tensor(example.ids), torch.tensor(example.labels)
        return Sample(ids, labels, mels, mel_lengths, task)
