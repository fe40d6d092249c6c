"""Check that every results table in the published docs says where its numbers come from.

Usage:
    python scripts/check_docs.py

It checks README.md, docs/*.md and benchmarks_perf/*.md, and exits 1 on a problem.

The convention is set in docs/experiments.md, "How configurations are chosen". Each Markdown table
has a paragraph starting ``Source:`` as the nearest paragraph above or below it. That paragraph
names one of two things.

The first is a link to the entry that records the run (``[...](experiments.md#...)``,
``[...](benchmarks_perf/RESULTS.md)``) or to the publication quoted.

The second is the command in backquotes, the date (``YYYY-MM-DD``) and the commit (7 to 40 hex
digits). Where a past run's command was never recorded, the words "command not recorded" stand in
its place. The gap is thus stated, not hidden.

A table that holds no measured figure (a list of files, of options) says so with
``<!-- not results -->``. That marker is the nearest non-blank line above the table. Tables inside
fenced code blocks are not tables.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PATTERNS = ("README.md", "docs/*.md", "benchmarks_perf/*.md")
SOURCE = "Source:"
EXEMPT = "<!-- not results -->"
SEPARATOR = re.compile(r"^\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")
LINK = re.compile(r"\]\([^)\s]+\)")
COMMAND = re.compile(r"`[^`]+`|command not recorded")
DATE = re.compile(r"\b\d{4}-\d{2}-\d{2}\b")
COMMIT = re.compile(r"\b[0-9a-f]{7,40}\b")


def tables(lines: Sequence[str]) -> Iterator[tuple[int, int]]:
    """``(first, last)`` line indices of each table.

    A table is a ``|`` row followed by a separator row, and the rows after it. Fenced code blocks
    are skipped.
    """
    fenced, index = False, 0
    while index < len(lines):
        line = lines[index].strip()
        if line.startswith("```"):
            fenced = not fenced
        elif (
            not fenced
            and line.startswith("|")
            and index + 1 < len(lines)
            and SEPARATOR.match(lines[index + 1].strip())
        ):
            last = index + 1
            while last + 1 < len(lines) and lines[last + 1].strip().startswith("|"):
                last += 1
            yield index, last
            index = last
        index += 1


def _paragraph(lines: Sequence[str], start: int, step: int) -> str:
    """The nearest paragraph from ``start`` in direction ``step``.

    Its non-blank lines are joined by spaces. It is empty at either end of the text.
    """
    while 0 <= start < len(lines) and not lines[start].strip():
        start += step
    found = []
    while 0 <= start < len(lines) and lines[start].strip():
        found.append(lines[start].strip())
        start += step
    return " ".join(found[::step])


def source_problem(line: str) -> str | None:
    """What a ``Source:`` line lacks.

    It is None when the line names a linked entry or a command, a date and a commit.
    """
    if LINK.search(line):
        return None
    missing = [
        name
        for name, pattern in (
            ("a `command`", COMMAND),
            ("a date YYYY-MM-DD", DATE),
            ("a commit", COMMIT),
        )
        if not pattern.search(line)
    ]
    if not missing:
        return None
    return f"its Source: line lacks {', '.join(missing)} (or a link to the entry that has them)"


def check(text: str) -> list[tuple[int, str]]:
    """``(line number, problem)`` for each table of a Markdown text without a valid source."""
    lines = text.splitlines()
    problems = []
    for first, last in tables(lines):
        above, below = _paragraph(lines, first - 1, -1), _paragraph(lines, last + 1, 1)
        if above.endswith(EXEMPT):
            continue
        sources = [line for line in (above, below) if line.startswith(SOURCE)]
        if not sources:
            problems.append(
                (
                    first + 1,
                    f"table without a '{SOURCE}' paragraph right above or "
                    f"below it (or '{EXEMPT}' above it if it holds no "
                    "measured figure)",
                )
            )
        elif all(source_problem(line) for line in sources):
            problems.append((first + 1, f"table whose {source_problem(sources[0])}"))
    return problems


def main(root: Path = ROOT) -> int:
    paths = sorted(path for pattern in PATTERNS for path in root.glob(pattern))
    problems = [
        f"{path.relative_to(root)}:{number}: {problem}"
        for path in paths
        for number, problem in check(path.read_text(encoding="utf-8"))
    ]
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"check_docs: {len(paths)} files, {len(problems)} problems", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
