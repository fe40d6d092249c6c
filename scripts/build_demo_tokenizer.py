"""Build ``qwen_audio/assets/demo.tiktoken``: a small, real BPE vocabulary.

It serves the tiny configs and the offline demo.

Usage:
    python scripts/build_demo_tokenizer.py

This rewrites the committed file byte-identically: the build is deterministic.

The BPE is byte-level, in the released Qwen way. Text is NFC-normalised and pre-split with the
released pattern (PAT_STR). Ranks 0 ... 255 are the single bytes, then come 3840 learned merges, for
exactly 4096 regular ranks. The released special tokens follow at load time. The demo vocabulary
thus has n_vocab 4096 + 3522 = 7618 (``<audio>`` = 7616).

The training text is the sentence column of ``qwen_audio/assets/demo_corpus.txt`` (lines
``en|zh|label<TAB>text``), one sentence per line. Each step merges the most frequent adjacent pair,
with ties broken by the smaller byte pair. The result thus does not depend on dictionary order or
the Python version.
"""

from __future__ import annotations

import argparse
import base64
import collections
import unicodedata
from pathlib import Path

import regex

from qwen_audio.tokenizer import PAT_STR

ASSETS = Path(__file__).resolve().parents[1] / "qwen_audio" / "assets"
CORPUS_TAGS = ("en", "zh", "label")


def read_corpus(path: Path) -> str:
    """The sentences of a demo corpus file, one per line, NFC-normalised."""
    sentences = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        tag, _, sentence = line.partition("\t")
        if tag not in CORPUS_TAGS or not sentence.strip():
            raise ValueError(
                f"{path}:{number}: expected '<{'|'.join(CORPUS_TAGS)}><TAB><text>', got {line!r}"
            )
        sentences.append(sentence)
    return unicodedata.normalize("NFC", "\n".join(sentences) + "\n")


def train_bpe(text: str, vocab_size: int) -> dict[bytes, int]:
    """Byte-level BPE ranks: the 256 bytes, then the new tokens.

    Each new token comes in the order its merge was learned.
    """
    words = collections.Counter(
        tuple(bytes([b]) for b in piece.encode()) for piece in regex.findall(PAT_STR, text)
    )
    ranks = {bytes([b]): b for b in range(256)}
    while len(ranks) < vocab_size:
        pairs: collections.Counter[tuple[bytes, bytes]] = collections.Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        if not pairs:
            raise ValueError(
                f"the corpus supports only {len(ranks)} tokens, fewer than vocab_size {vocab_size}"
            )
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        ranks.setdefault(best[0] + best[1], len(ranks))
        words = collections.Counter({_merge(word, best): count for word, count in words.items()})
    return ranks


def _merge(word: tuple[bytes, ...], pair: tuple[bytes, bytes]) -> tuple[bytes, ...]:
    merged, index = [], 0
    while index < len(word):
        if word[index : index + 2] == pair:
            merged.append(pair[0] + pair[1])
            index += 2
        else:
            merged.append(word[index])
            index += 1
    return tuple(merged)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", type=Path, default=ASSETS / "demo_corpus.txt")
    parser.add_argument("--output", type=Path, default=ASSETS / "demo.tiktoken")
    parser.add_argument("--vocab-size", type=int, default=4096)
    args = parser.parse_args()
    ranks = train_bpe(read_corpus(args.corpus), args.vocab_size)
    by_rank = sorted(ranks, key=ranks.__getitem__)
    args.output.write_text(
        "".join(f"{base64.b64encode(token).decode()} {ranks[token]}\n" for token in by_rank),
        encoding="ascii",
    )
    print(f"wrote {len(ranks)} ranks to {args.output} ({args.output.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
