"""The demo corpus and its chat files as :class:`~qwen_audio.data.corpus.Corpus` objects.

Configs name these objects. A demo config gives one to its data module (``data.corpus``);
``demo:train``, ``demo:noise``, ... then name its files. The corpus also writes its record into an
exported model, and checks that evaluation reads that corpus back.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from qwen_audio.config import ConfigError
from qwen_audio.data.corpus import Corpus
from qwen_audio.data.demo.chat import build_demo_chat
from qwen_audio.data.demo.corpus import (
    CONDITIONS,
    CORPUS_RECORD,
    SPLITS,
    build_demo_corpus,
    corpus_fingerprint,
    corpus_record,
)
from qwen_audio.data.manifest import ManifestEntry

DEFAULT_SEED, DEFAULT_SIZE = 0, 48


def recorded_corpus(
    checkpoint: str | None, seed: int | None, size: int | None
) -> tuple[int, int, str | None]:
    """``(seed, size, fingerprint)`` of the demo corpus to evaluate ``checkpoint`` on.

    Those its export records, else the given values (default 0 and 48) and no fingerprint. A corpus
    other than the recorded one, or of another version, is refused: its test split can hold training
    items of the recorded one.
    """
    path = os.path.join(checkpoint, CORPUS_RECORD) if checkpoint else None
    if path is None or not os.path.isfile(path):
        return (
            (DEFAULT_SEED if seed is None else seed),
            (DEFAULT_SIZE if size is None else size),
            None,
        )
    record = json.loads(Path(path).read_text())
    fingerprint = record.pop(
        "fingerprint", None
    )  # optional: records of corpus version 6 may lack it
    asked = corpus_record(
        record["seed"] if seed is None else seed, record["size"] if size is None else size
    )
    if asked != record:
        raise ConfigError(
            f"{path}: the model was trained on the demo corpus {record}, but evaluation asks for {asked}; the test "
            f"split of another corpus can hold training items of this one (drop --data.corpus.seed/"
            f"--data.corpus.size to evaluate on the recorded corpus)"
        )
    return record["seed"], record["size"], fingerprint


class DemoCorpus(Corpus):
    """The embedded demo corpus: ``demo:<manifest>``.

    It is built by :func:`~qwen_audio.data.demo.corpus.build_demo_corpus`.

    Args:
        seed, size: of the corpus: its seed, and its training clips per group. ``None``: when
            evaluating, those that the evaluated model's export records; otherwise 0 and 48.
    """

    name = "demo"

    def __init__(self, seed: int | None = None, size: int | None = None) -> None:
        self.seed, self.size = seed, size
        self.fingerprint: str | None = (
            None  # of the corpus a model was trained on; a build must match it
        )

    def _built(self) -> dict[str, Path]:
        """The corpus's manifests, built on first use.

        They are refused if their fingerprint is not the expected one.
        """
        manifests = build_demo_corpus(seed=self._seed, size=self._size)
        built = corpus_fingerprint(manifests) if self.fingerprint is not None else None
        if built != self.fingerprint:
            raise ConfigError(
                f"{manifests['train'].parent}: this demo corpus has fingerprint {built}, but the model was trained "
                f"on one of fingerprint {self.fingerprint}, with the same version, seed and size: other generation "
                "code built one of them. Remove the folder to rebuild it with this code, and bump DEMO_VERSION "
                "whenever the generation changes"
            )
        return manifests

    @property
    def _seed(self) -> int:
        return DEFAULT_SEED if self.seed is None else self.seed

    @property
    def _size(self) -> int:
        return DEFAULT_SIZE if self.size is None else self.size

    def files(self) -> dict[str, Path]:
        return self._built()

    def benchmark(self, entry: ManifestEntry) -> str:
        """``demo_<task>``, with the speech language for ASR and SRWT (``demo_asr_en``)."""
        return f"demo_{entry.task}" + (
            f"_{entry.audio_language}" if entry.task in ("asr", "srwt") else ""
        )

    def save_record(self, folder: Path) -> None:
        """Write :data:`CORPUS_RECORD`: the corpus's record and fingerprint, replaced atomically."""
        manifests = self._built()
        record = {
            **corpus_record(self._seed, self._size),
            "fingerprint": corpus_fingerprint(manifests),
        }
        path = Path(folder) / CORPUS_RECORD
        staged = path.with_suffix(".tmp")
        staged.write_text(json.dumps(record, indent=1) + "\n")
        os.replace(staged, path)

    def recorded(self, folder: str | None) -> DemoCorpus:
        """The corpus that ``folder``'s export records (:func:`recorded_corpus`).

        It is expected to match its recorded fingerprint.
        """
        seed, size, fingerprint = recorded_corpus(folder, self.seed, self.size)
        corpus = type(self)(seed, size)
        corpus.fingerprint = fingerprint
        return corpus

    def conditions(self, path: str) -> tuple[str, ...]:
        """The noisy and unseen-voice rows of the held-out splits.

        For example ``demo:test`` -> ``demo:test_noisy``, ...
        """
        held_out = {f"{self.name}:{split}" for split in SPLITS[1:]}
        return CONDITIONS if path in held_out else ()

    def question_family(self, conversation_id: str) -> str:
        """The family of a demo conversation id (``test-scene-3`` -> ``scene``).

        Any other id is its own family.
        """
        parts = conversation_id.split("-")
        return parts[1] if len(parts) == 3 else conversation_id


class DemoChat(DemoCorpus):
    """The chat files made from the demo corpus: ``demo:<split>``.

    They are built by :func:`~qwen_audio.data.demo.chat.build_demo_chat`. An export records the demo
    corpus they come from, as :class:`DemoCorpus` does.
    """

    def files(self) -> dict[str, Path]:
        return build_demo_chat(seed=self._seed, size=self._size)
