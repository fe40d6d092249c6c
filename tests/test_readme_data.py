"""The README's "Your own data" section, run as a user runs it: its shell blocks, in a fresh folder,
with only the trainings cut short (two steps of short batches, no validation or callbacks). It makes
the example data, converts a ``datasets`` folder and a lhotse CutSet, pretrains from their
manifests, shards them, and pretrains from the shards."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("datasets")
pytest.importorskip("lhotse")
pytest.importorskip("litdata")
REPO = Path(__file__).resolve().parents[1]
TWO_STEPS = """\
trainer:
  max_steps: 2
  log_every_n_steps: 1
  limit_val_batches: 0
  num_sanity_val_steps: 0
  enable_progress_bar: false
  callbacks: []
data:
  max_seconds: 8
"""


def section_commands(readme: str, heading: str) -> list[str]:
    """The shell commands of a README section's ```bash blocks, continuation lines joined."""
    section = readme.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    return [
        command
        for block in blocks
        for command in block.replace("\\\n", " ").splitlines()
        if command
    ]


@pytest.mark.slow
def test_the_readme_converts_shards_and_pretrains_on_example_data(tmp_path):
    commands = section_commands((REPO / "README.md").read_text(), "## Your own data")
    trainings = [c for c in commands if c.startswith("python -m recipes.pretrain fit")]
    assert len(trainings) == 2 and all("#" not in c for c in trainings)
    (tmp_path / "two_steps.yaml").write_text(TWO_STEPS)
    script = "\n".join(f"{c} --config two_steps.yaml" if c in trainings else c for c in commands)
    for folder in ("recipes", "scripts"):  # the paths the commands name, as in a clone
        (tmp_path / folder).symlink_to(REPO / folder)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-6000:]}"

    data = tmp_path / "data"
    hf_lines = [json.loads(line) for line in (data / "hf" / "train.jsonl").open()]
    cut_lines = [json.loads(line) for line in (data / "lhotse" / "cuts_train.jsonl").open()]
    assert len(hf_lines) == 24 and {line["task"] for line in hf_lines} == {"asr"}
    assert [line["task"] for line in cut_lines] == [
        "asr",
        "srwt",
    ] * 24  # word alignments give SRWT lines
    assert all(line["words"] for line in cut_lines[1::2])
    assert (data / "shards" / "train" / "index.json").is_file()
    assert (data / "shards" / "cuts_train" / "index.json").is_file()
    logs = sorted(
        (tmp_path / "runs" / "pretrain-demo").glob("lightning_logs/version_*/metrics.csv")
    )
    assert len(logs) == 2, "one log per training"
    for log in logs:
        steps = [int(row["step"]) for row in csv.DictReader(log.open()) if row.get("train/loss")]
        assert steps == [0, 1]
