"""Which column (or supervision field) holds each manifest field, set by flags or a YAML file of the
same keys."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import yaml

from qwen_audio.data.manifest import LANGUAGES, ManifestError
from qwen_audio.prompts import TASKS


@dataclass
class Fields:
    """Where the manifest fields come from.

    ``audio``/``text``: the columns of the audio and the transcript.
    ``language``/``text_language``/``task``/``words``: columns that hold them, or ``None`` for none:
    then every row takes ``default_language`` (and the text language the audio's) and
    ``default_task``. ``words``: a column of word timings, a list of ``{word, start, end}`` (seconds
    from the clip's start); a row with them gives an SRWT line beside its ASR line. For lhotse,
    ``words`` names the alignment kind (``word``). ``languages``: renames of the data's language
    values, e.g. ``{English: en}``.
    """

    audio: str = "audio"
    text: str = "text"
    language: str | None = None
    text_language: str | None = None
    task: str | None = None
    words: str | None = None
    default_language: str = "en"
    default_task: str = "asr"
    languages: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_yaml(cls, path: str, **overrides: Any) -> Fields:
        """The mapping in a YAML file (keys as the fields above); ``overrides`` that are not
        ``None`` win."""
        with open(path, encoding="utf-8") as file:
            mapping = yaml.safe_load(file) or {}
        known = {f.name for f in fields(cls)}
        if not isinstance(mapping, dict) or set(mapping) - known:
            raise ValueError(
                f"{path}: expected a mapping with keys among {sorted(known)}, got {mapping!r}"
            )
        return cls(**{**mapping, **{k: v for k, v in overrides.items() if v is not None}})

    def __post_init__(self) -> None:
        if self.default_task not in TASKS:
            raise ValueError(f"default_task: unknown task {self.default_task!r}")
        self.language_code(self.default_language, "default_language")

    def language_code(self, value: Any, name: str) -> str | None:
        """``value`` renamed by ``languages`` and checked against the tokenizer's language tags."""
        code = self.languages.get(value, value) if isinstance(value, str) else value
        if code is None or code == "unknown":
            return None
        if code not in LANGUAGES:
            raise ManifestError(
                f"unknown language {value!r} (known: {sorted(LANGUAGES)}; "
                f"rename it with languages: {{{value}: <code>}})",
                field=name,
            )
        return code
