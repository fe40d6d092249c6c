"""A corpus that configs name by prefix: ``<name>:<manifest>`` is one of its files.

Its files are built on first use.

Data modules resolve such names through the corpus they are given, so they need not know how it is
made, how its conversation ids read, or how an exported model records it. A path without the prefix
passes through unchanged.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

from qwen_audio.data.manifest import ManifestEntry


class Corpus(ABC):
    """A corpus of manifests (or conversation files), each named ``<name>:<manifest>`` in a config.

    A subclass sets :attr:`name` and says how its files are built, how evaluation scores and checks
    it, and how its conversation ids read.
    """

    name: str

    def names(self, path: str) -> bool:
        """Whether ``path`` is ``<name>:<manifest>`` of this corpus."""
        return path.startswith(f"{self.name}:")

    def resolve(self, path: str) -> str:
        """The file that ``path`` names; any other path comes back unchanged."""
        if not self.names(path):
            return path
        return str(self.files()[path[len(self.name) + 1 :]])

    @abstractmethod
    def files(self) -> dict[str, Path]:
        """Each file of the corpus by manifest name, built on first use.

        ``train`` is the training split.
        """

    @abstractmethod
    def benchmark(self, entry: ManifestEntry) -> str:
        """The evaluation benchmark that scores ``entry``.

        It is a name of ``qwen_audio.eval.tasks.BENCHMARKS``.
        """

    @abstractmethod
    def conditions(self, path: str) -> tuple[str, ...]:
        """The robustness conditions of the held-out split ``path``.

        Each is read from ``<path>_<condition>``.
        """

    @abstractmethod
    def save_record(self, folder: Path) -> None:
        """Write into an exported model's folder what identifies this corpus."""

    @abstractmethod
    def recorded(self, folder: str | None) -> Corpus:
        """This corpus as the model in ``folder`` was trained on it (the record :meth:`save_record`
        wrote). Options that conflict with the record are refused: evaluation must read the corpus
        the model learned."""

    @abstractmethod
    def question_family(self, conversation_id: str) -> str:
        """The question family of a conversation id, which chat reports group answers by."""


def resolve(corpus: Corpus | None, path: str) -> str:
    """The file that ``path`` names in ``corpus``, or ``path`` itself without a corpus."""
    return path if corpus is None else corpus.resolve(path)


def corpus_read(corpus: Corpus | None, paths: Sequence[str]) -> Corpus | None:
    """``corpus`` if one of ``paths`` names it, else None: the corpus a split reads."""
    if corpus is not None and any(corpus.names(path) for path in paths):
        return corpus
    return None
