"""Shards train as the manifest that made them: the same training loss at every step.

Usage:
    python scripts/shard_parity.py             # 300 steps of the tiny model, twice (docs/data.md).
    python scripts/shard_parity.py --steps 20  # a quick look.

The script writes the demo corpus's training manifest (size 48, 288 lines) as shards
(:func:`qwen_audio.data.shard.write_shards`). It then runs ``recipes.pretrain`` twice from the same
seed, streamed, each run in its own process: once on the manifest and once on its shards. It prints
the losses of the two runs side by side, with their largest difference. The recipe is demo.yaml with
the ``tiny`` model and short batches. A few hundred steps thus take minutes on a CPU.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from qwen_audio.data.demo import build_demo_corpus
from qwen_audio.data.shard import write_shards

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "recipes" / "configs" / "pretrain" / "demo.yaml"
RUN_CONFIG = """\
model: {{model: tiny}}
trainer: {{max_steps: {steps}, max_epochs: null, log_every_n_steps: 1, enable_progress_bar: false,
          limit_val_batches: 0, num_sanity_val_steps: 0, check_val_every_n_epoch: null,
          val_check_interval: 100000, callbacks: []}}
data: {{val: null, test: null, streaming: true, cache: false, augment: null, max_seconds: {max_seconds},
       buffer_size: 288}}
"""


def train(source: Path, root: Path, config: Path) -> tuple[dict[int, float], float]:
    """Train from ``source`` (a manifest or a shard folder) into ``root``.

    Returns the run's loss by step, and the seconds it took.
    """
    shutil.rmtree(root, ignore_errors=True)  # a log left by an earlier run would be read instead
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "recipes.pretrain",
            "fit",
            "--config",
            str(DEMO),
            "--config",
            str(config),
            "--data.train",
            f"[{source}]",
            "--trainer.default_root_dir",
            str(root),
            "--trainer.logger.init_args.save_dir",
            str(root),
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=True,
    )
    seconds = time.perf_counter() - start
    log = root / "lightning_logs" / "version_0" / "metrics.csv"
    losses = {
        int(row["step"]): float(row["train/loss"])
        for row in csv.DictReader(log.open())
        if row["train/loss"]
    }
    return losses, seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument(
        "--max_seconds", type=float, default=8.0, help="padded audio seconds per batch"
    )
    parser.add_argument("--workdir", type=Path, default=Path("runs/shard_parity"))
    parser.add_argument("--every", type=int, default=50, help="steps between the rows printed")
    args = parser.parse_args(argv)
    workdir = args.workdir.resolve()
    manifest = build_demo_corpus(size=48)["train"]
    shards = write_shards([manifest], workdir / "shards")[0]
    config = workdir / "run.yaml"
    config.write_text(RUN_CONFIG.format(steps=args.steps, max_seconds=args.max_seconds))
    (manifest_losses, manifest_seconds), (shard_losses, shard_seconds) = (
        train(source, workdir / f"from_{name}", config)
        for source, name in ((manifest, "manifest"), (shards, "shards"))
    )
    shared = sorted(manifest_losses.keys() & shard_losses.keys())
    gap = max(abs(manifest_losses[s] - shard_losses[s]) for s in shared)
    print(
        f"\nmanifest {manifest}: {len(manifest_losses)} steps logged in {manifest_seconds:.0f} s; "
        f"shards {shards}: {len(shard_losses)} steps in {shard_seconds:.0f} s"
    )
    print("\n| step | loss, manifest | loss, shards |\n|---|---|---|")
    for step in [s for s in shared if s % args.every == 0 or s == shared[-1]]:
        print(f"| {step} | {manifest_losses[step]:.6f} | {shard_losses[step]:.6f} |")
    print(
        f"\nmaximum absolute difference over steps {shared[0]}-{shared[-1]} ({len(shared)} steps): {gap:.3g}"
    )


if __name__ == "__main__":
    main()
