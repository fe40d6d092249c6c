"""The embedded demo: a corpus of synthesised clips (:mod:`.corpus`, speech from :mod:`.espeak`) and
chat data about it (:mod:`.chat`), generated on first use, that a small model learns from on a CPU.
Configs name them through :class:`DemoCorpus` and :class:`DemoChat` (:mod:`.corpora`)."""

from qwen_audio.data.demo.chat import build_demo_chat
from qwen_audio.data.demo.corpora import DemoChat, DemoCorpus
from qwen_audio.data.demo.corpus import (
    CORPUS_RECORD,
    build_demo_corpus,
    corpus_fingerprint,
    corpus_record,
)

__all__ = [
    "CORPUS_RECORD",
    "DemoChat",
    "DemoCorpus",
    "build_demo_chat",
    "build_demo_corpus",
    "corpus_fingerprint",
    "corpus_record",
]
