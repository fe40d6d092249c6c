"""scripts/check_docs.py on hand-made Markdown: which tables carry their source and which do not."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_docs.py"
spec = importlib.util.spec_from_file_location("check_docs", SCRIPT)
check_docs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_docs)
check = check_docs.check

TABLE = "| run | WER % |\n|---|---|\n| a | 3.1 |\n| b | 4.2 |\n"
FULL = (
    "Source: `python -m recipes.evaluate test --config demo.yaml`, 2026-12-04, commit b455f8a, "
    "demo.yaml.\n"
)
SFT = "Source: `python -m recipes.sft fit`,"


def test_a_source_above_or_below_with_command_date_and_commit_passes():
    assert check("Intro.\n\n" + FULL + "\n" + TABLE) == []
    assert check(TABLE + "\n" + FULL + "\nMore text.\n") == []


def test_a_link_to_the_recording_entry_is_a_source():
    assert check(TABLE + "Source: [the v7 runs](experiments.md#twice-the-data).\n") == []
    assert check("Source: [the H200 run](benchmarks_perf/RESULTS.md).\n" + TABLE) == []


def test_a_table_without_a_source_fails_at_its_first_line():
    problems = check("# Results\n\nSome words.\n\n" + TABLE + "\nNo source here.\n")
    assert [number for number, _ in problems] == [5]
    assert "without a 'Source:' paragraph" in problems[0][1]


def test_a_source_paragraph_may_span_lines_but_must_be_the_nearest():
    assert check(SFT + "\n2026-12-04, commit b455f8a.\n" + TABLE) == []
    assert len(check(FULL + "\nA paragraph between.\n\n" + TABLE)) == 1
    assert len(check("Text first.\n" + FULL + TABLE)) == 1  # the paragraph starts with "Text"


def test_a_source_lacking_the_date_or_commit_names_what_is_missing():
    [(_, problem)] = check(SFT + " commit b455f8a.\n" + TABLE)
    assert "a date YYYY-MM-DD" in problem and "commit" not in problem.split("lacks")[1]
    [(_, problem)] = check("Source: measured last week.\n" + TABLE)
    assert "a `command`, a date YYYY-MM-DD, a commit" in problem
    # an unrecorded command is stated as such
    assert check("Source: command not recorded, 2026-12-02, commit 794b6ba.\n" + TABLE) == []


def test_exempt_tables_and_fenced_code_are_not_checked():
    assert check("<!-- not results -->\n" + TABLE) == []
    assert check("```\n" + TABLE + "```\n") == []
    assert len(check("<!-- not results -->\n" + TABLE + "\n" + TABLE)) == 1  # each table its own


def test_main_reads_readme_docs_and_benchmarks(tmp_path, capsys):
    (tmp_path / "docs").mkdir()
    (tmp_path / "benchmarks_perf").mkdir()
    (tmp_path / "README.md").write_text(FULL + TABLE, encoding="utf-8")
    (tmp_path / "docs" / "a.md").write_text(TABLE, encoding="utf-8")
    (tmp_path / "benchmarks_perf" / "RESULTS.md").write_text(TABLE, encoding="utf-8")
    assert check_docs.main(tmp_path) == 1
    err = capsys.readouterr().err
    assert "docs/a.md:1: table without" in err and "benchmarks_perf/RESULTS.md:1:" in err
    assert "\nREADME.md" not in err and not err.startswith("README.md")
    assert "3 files, 2 problems" in err
