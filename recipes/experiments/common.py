"""What the toy-scale ablations share: training, scoring and reporting demo-pretraining variants.

The variants train with the real recipe and are scored on the held-out demo test set. The results go
to a Markdown table and a PNG of the validation curves.

Each variant is a subprocess run, in its own folder, of::

    python -m recipes.pretrain fit --config recipes/configs/pretrain/demo.yaml \\
        --config <override.yaml>

The flat-prompt variant runs the same recipe with its own data module,
:mod:`recipes.experiments.flat_prompts`. The override changes only the data (and, for quick checks,
the model preset), the step budget and what is logged and exported. What runs is thus the recipe a
user runs.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml
from matplotlib.figure import Figure

from qwen_audio.checkpoint import load_model, load_tokenizer
from qwen_audio.config import QwenAudioConfig
from qwen_audio.data import AudioTextDataModule
from qwen_audio.data.dataset import task_example
from qwen_audio.data.demo import DemoCorpus
from qwen_audio.data.manifest import ManifestEntry, read_manifest, write_manifest
from qwen_audio.eval.datamodule import corpus_items
from qwen_audio.eval.tasks import Prediction, score_predictions
from qwen_audio.generate import GenerationConfig, answer_prompts
from qwen_audio.model import QwenAudio
from qwen_audio.prompts import Example, task_target
from qwen_audio.tokenizer import Tokenizer
from recipes.experiments.flat_prompts import encode_flat

REPO = Path(__file__).resolve().parents[2]
DEMO_CONFIG = REPO / "recipes" / "configs" / "pretrain" / "demo.yaml"
PromptStyle = Literal["tags", "flat"]
RECIPES: dict[PromptStyle, str] = {
    "tags": "recipes.pretrain",
    "flat": "recipes.experiments.flat_prompts",
}
# Generation lengths: the longest demo target of each task, with room to spare (AQA's is the brief's
# 8).
MAX_NEW_TOKENS = {"asr": 32, "srwt": 64, "mna": 16, "asc": 8, "aqa": 8}
EVAL_BATCH = 16
MISSING = "n/a"
# The columns an ablation table can show: (demo benchmark, metric) as ``recipes.evaluate`` scores
# them (qwen_audio.eval.tasks: WER/CER in %, the release's normalisation; AAS in ms; exact-match
# accuracy).
COLUMNS: dict[str, tuple[str, str]] = {
    "ASR WER en": ("demo_asr_en", "wer"),
    "ASR CER zh": ("demo_asr_zh", "cer"),
    "SRWT WER en": ("demo_srwt_en", "wer"),
    "SRWT CER zh": ("demo_srwt_zh", "cer"),
    "SRWT AAS ms en": ("demo_srwt_en", "aas_ms"),
    "SRWT AAS ms zh": ("demo_srwt_zh", "aas_ms"),
    "AQA acc": ("demo_aqa", "accuracy"),
    "ASC acc": ("demo_asc", "accuracy"),
    "MNA acc": ("demo_mna", "accuracy"),
}


def ablation_arguments(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="training length, in epochs over the full demo training set (default: demo.yaml's "
        "trainer.max_epochs, the main job's length: about 9 minutes a run on 2 free cores)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "runs" / "experiments",
        help="folder of the table, the plot and one sub-folder per run (default %(default)s)",
    )
    parser.add_argument(
        "--demo-size", type=int, default=None, help="data.corpus.size (default: demo.yaml's)"
    )
    parser.add_argument("--preset", default=None, help="model preset (default: demo.yaml's)")
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0, 1, 2],
        help="seed_everything of each run of every arm (model initialisation; the corpus and the "
        "batch order stay demo.yaml's); tables give mean ± std over them (default %(default)s)",
    )
    return parser


@dataclass(frozen=True)
class DemoSetup:
    """demo.yaml's data settings and model preset, with the command line's overrides.

    It also holds the corpus they name.
    """

    data: dict  # without the corpus, which size and manifests give
    size: int
    preset: str
    epochs: int
    manifests: dict[str, Path]

    @classmethod
    def from_arguments(cls, args: argparse.Namespace) -> DemoSetup:
        config = yaml.safe_load(DEMO_CONFIG.read_text())
        data = dict(config["data"])
        data.pop(
            "augment", None
        )  # the ablations compare prompts on clean audio, as docs/experiments.md records
        corpus = DemoCorpus(**data.pop("corpus")["init_args"])
        if args.demo_size is not None:
            corpus.size = args.demo_size
        epochs = args.epochs or config["trainer"]["max_epochs"]
        return cls(
            data, corpus.size, args.preset or config["model"]["preset"], epochs, corpus.files()
        )

    def steps_per_epoch(self, train_manifest: Path) -> int:
        """Optimizer steps in one epoch over ``train_manifest``, as the recipe's duration-bucketed
        sampler batches it."""
        datamodule = AudioTextDataModule(
            **{**self.data, "train": [str(train_manifest)], "val": [], "test": []}
        )
        config = QwenAudioConfig.from_name(self.preset)
        datamodule.connect(load_tokenizer(preset=self.preset), config.encoder.n_mels)
        datamodule.setup("fit")
        return len(datamodule.train_dataloader().batch_sampler)


def write_manifest_without(source: Path, path: Path, tasks: set[str]) -> Path:
    """Copy the manifest ``source`` to ``path`` without the lines of ``tasks``.

    Audio paths are made absolute.
    """
    entries = read_manifest(source)
    missing = tasks - {entry.task for entry in entries}
    if missing:
        raise ValueError(f"{source} holds no line of task(s) {sorted(missing)} to leave out")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_manifest(path, [entry for entry in entries if entry.task not in tasks])
    return path


@dataclass(frozen=True)
class Variant:
    """One arm of an ablation.

    ``data`` overrides demo.yaml's data section. ``prompt_style`` is how the arm is trained
    (:data:`RECIPES`) and asked.
    """

    name: str
    folder: str
    data: dict
    prompt_style: PromptStyle = "tags"


def all_tasks(name: str) -> Variant:
    """The variant with demo.yaml's data unchanged: every task, with hierarchical tags.

    The SRWT ablation's "with" arm and the tag ablation's "tags" arm are both this variant. They
    share one run per seed, kept in one folder.
    """
    return Variant(name, "demo-all-tasks", {})


@dataclass
class Run:
    variant: Variant
    seed: int
    folder: Path
    seconds: float
    scores: dict[str, float | None] = field(default_factory=dict)

    @property
    def metrics_csv(self) -> Path:
        return self.folder / "lightning_logs" / "version_0" / "metrics.csv"

    @property
    def model_dir(self) -> Path:
        return self.folder / "model"


def train(
    variant: Variant, seed: int, out: Path, setup: DemoSetup, max_steps: int, val_every: int
) -> Run:
    """Fit one variant from ``seed`` with the pretraining recipe for ``max_steps`` optimizer steps.

    Validation runs every ``val_every`` steps, across epoch ends. Runs of different epoch lengths
    thus validate at the same steps. A folder that already holds a finished run of the same override
    is reused, not retrained. A killed ablation therefore resumes at its first unfinished run, and
    the arm both ablations share (:func:`all_tasks`) trains once.
    """
    folder = out / f"{variant.folder}-seed{seed}"
    override = {
        "seed_everything": seed,
        "trainer": {
            "max_epochs": -1,
            "max_steps": max_steps,
            "check_val_every_n_epoch": None,
            "val_check_interval": val_every,
            "num_sanity_val_steps": 0,
            "enable_progress_bar": False,
            "enable_checkpointing": False,
            "default_root_dir": str(folder),
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(folder), "version": 0},
            },
            "callbacks": [
                {
                    "class_path": "qwen_audio.lit.ExportPretrained",
                    "init_args": {"dirpath": str(folder / "model")},
                }
            ],
        },
        "model": {"preset": setup.preset},
        "data": {"corpus": {"init_args": {"size": setup.size}}, **variant.data},
    }
    override_text = yaml.safe_dump(override, sort_keys=False)
    name = f"{variant.name}, seed {seed}"
    finished, corpus = (
        folder / "run.json",
        str(setup.manifests["train"].parent),
    )  # the corpus folder names its version
    if finished.exists() and (folder / "override.yaml").read_text() == override_text:
        record = json.loads(finished.read_text())
        if record["corpus"] == corpus:
            print(
                f"[{name}] reusing the finished run in {folder} (same override and corpus, trained in "
                f"{record['train_seconds']:.0f} s)",
                flush=True,
            )
            return Run(variant, seed, folder, record["train_seconds"])
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / "override.yaml").write_text(override_text)
    command = [
        sys.executable,
        "-m",
        RECIPES[variant.prompt_style],
        "fit",
        "--config",
        str(DEMO_CONFIG),
        "--config",
        str(folder / "override.yaml"),
    ]
    print(f"[{name}] training {max_steps} steps: {' '.join(command[1:])}", flush=True)
    start = time.perf_counter()
    with open(folder / "train.log", "w") as log:
        result = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(
            f"[{name}] the recipe failed with exit code {result.returncode}; "
            f"see {folder / 'train.log'}"
        )
    print(f"[{name}] trained in {seconds:.0f} s", flush=True)
    finished.write_text(
        json.dumps({"train_seconds": seconds, "corpus": corpus})
    )  # last: without it, retrain
    return Run(variant, seed, folder, seconds)


def validation_curves(metrics_csv: Path) -> dict[str, list[tuple[int, float]]]:
    """Every ``val/...`` column of a Lightning CSV log as (step, value) points in step order."""
    curves: dict[str, list[tuple[int, float]]] = {}
    with open(metrics_csv, newline="") as file:
        for row in csv.DictReader(file):
            for key, value in row.items():
                if key.startswith("val/") and value:
                    curves.setdefault(key, []).append((int(row["step"]), float(value)))
    return {key: sorted(points) for key, points in curves.items()}


def final_validation_loss(metrics_csv: Path, key: str = "val/loss") -> float:
    points = validation_curves(metrics_csv).get(key)
    if not points:
        raise ValueError(f"{metrics_csv} holds no {key}")
    return points[-1][1]


def plot_validation_losses(
    curves: dict[str, dict[str, list[tuple[int, float]]]], path: Path, title: str
) -> None:
    """One panel per validation loss that any run logged, one line per run.

    The panels are the overall loss, then each task's.
    """
    keys = sorted(
        {key for run in curves.values() for key in run if key.startswith("val/loss")},
        key=lambda key: (key != "val/loss", key),
    )
    columns = min(3, len(keys))
    rows = -(-len(keys) // columns)
    figure = Figure(
        figsize=(4.2 * columns, 3.2 * rows)
    )  # no pyplot: nothing global, no display needed
    axes = figure.subplots(rows, columns, squeeze=False).flatten()
    for axis in axes[len(keys) :]:
        axis.set_visible(False)
    for axis, key in zip(axes, keys):
        for name, run in curves.items():
            if key in run:
                steps, values = zip(*run[key])
                axis.plot(steps, values, marker="o", markersize=3, label=name)
        axis.set(title=key, xlabel="step", ylabel="loss")
        axis.grid(alpha=0.3)
    axes[0].legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def mean_std(values: Sequence[float | None]) -> str:
    """``mean ± std`` (sample standard deviation) of one arm's per-seed scores, with 3 decimals.

    One seed gives the mean alone. Any seed without a score gives ``n/a``.
    """
    if not values or any(value is None for value in values):
        return MISSING
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table, with floats to 3 decimals and ``None`` as ``n/a``."""

    def cell(value: object) -> str:
        if value is None:
            return MISSING
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def prompt_example(tokenizer: Tokenizer, entry: ManifestEntry, style: PromptStyle) -> Example:
    """The generation prompt of ``entry``, in the style its model was trained with.

    It is built as the training examples are, without the target.
    """
    return encode_flat(tokenizer, entry) if style == "flat" else task_example(tokenizer, entry)


def generate_answers(
    model: QwenAudio, tokenizer: Tokenizer, entries: Sequence[ManifestEntry], style: PromptStyle
) -> list[str]:
    """Greedy generations for entries of one task, decoded and stripped (stop token excluded)."""
    config = GenerationConfig(
        max_new_tokens=MAX_NEW_TOKENS[entries[0].task], stop_ids=(tokenizer.eod,)
    )
    examples = [prompt_example(tokenizer, entry, style) for entry in entries]
    return [
        answer.text for answer in answer_prompts(model, tokenizer, examples, config, EVAL_BATCH)
    ]


def score_answers(
    entries: Sequence[ManifestEntry], answers: Sequence[str]
) -> dict[str, float | None]:
    """The :data:`COLUMNS` that ``entries`` give scores for.

    Each entry is scored as its ``demo_*`` benchmark, the way ``recipes.evaluate`` scores the demo
    corpus.
    """
    items = corpus_items(DemoCorpus(), entries)
    scores = score_predictions(Prediction(item, answer) for item, answer in zip(items, answers))
    return {
        label: scores[name][name][metric]
        for label, (name, metric) in COLUMNS.items()
        if name in scores
    }


def evaluate(
    model_dir: Path, entries: Sequence[ManifestEntry], style: PromptStyle, predictions: Path
) -> dict[str, float | None]:
    """Score the exported model on ``entries`` (:func:`score_answers`), generating task by task.

    Every generation is written to ``predictions`` as JSONL (task, audio, reference, hypothesis). It
    is there to be read beside the numbers.
    """
    model, tokenizer = load_model(model_dir)
    scored: list[ManifestEntry] = []
    answers: list[str] = []
    with open(predictions, "w", encoding="utf-8") as file:
        for task in sorted({entry.task for entry in entries}):
            chosen = [entry for entry in entries if entry.task == task]
            generated = generate_answers(model, tokenizer, chosen, style)
            scored += chosen
            answers += generated
            for entry, answer in zip(chosen, generated):
                line = {
                    "task": task,
                    "audio": entry.audio,
                    "reference": task_target(entry.task, entry.text, entry.words, entry.duration),
                    "hypothesis": answer,
                }
                file.write(json.dumps(line, ensure_ascii=False) + "\n")
    return score_answers(scored, answers)


def run_ablation(
    title: str,
    name: str,
    variants: Sequence[Variant],
    setup: DemoSetup,
    out: Path,
    columns: Sequence[str],
    tasks: set[str],
    note: str,
    seeds: Sequence[int],
    loss: str = "val/loss",
) -> str:
    """Train and score every variant from every seed, and write the results under ``out``.

    Every run takes the same number of optimizer steps: ``setup.epochs`` epochs over the full
    training set. The runs are scored on the test lines of ``tasks``. ``out/<name>.md`` holds a
    table of the mean ± std over seeds per arm, then a table of every run. Both tables hold the last
    value of the validation column ``loss``. ``out/<name>.png`` plots the validation curves. It
    returns the arms' table.
    """
    epochs = setup.epochs
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    steps_per_epoch = setup.steps_per_epoch(setup.manifests["train"])
    test = [entry for entry in read_manifest(setup.manifests["test"]) if entry.task in tasks]
    runs = [
        train(variant, seed, out, setup, epochs * steps_per_epoch, steps_per_epoch)
        for seed in seeds
        for variant in variants
    ]
    for run in runs:
        start = time.perf_counter()
        run.scores = evaluate(
            run.model_dir, test, run.variant.prompt_style, run.folder / "predictions.jsonl"
        )
        print(
            f"[{run.variant.name}, seed {run.seed}] evaluated in {time.perf_counter() - start:.0f} s",
            flush=True,
        )
    headers = [*columns, f"final {loss}", "train s"]

    def values(run: Run) -> list[float | None]:
        return [
            *(run.scores.get(column) for column in columns),
            final_validation_loss(run.metrics_csv, loss),
            run.seconds,
        ]

    arms = [
        [
            variant.name,
            *(
                mean_std(scores)
                for scores in zip(*(values(run) for run in runs if run.variant == variant))
            ),
        ]
        for variant in variants
    ]
    table = markdown_table(["variant", *headers], arms)
    every_run = markdown_table(
        ["variant", "seed", *headers], [[run.variant.name, run.seed, *values(run)] for run in runs]
    )
    details = (
        f"{epochs} epochs = {epochs * steps_per_epoch} optimizer steps per run; model preset "
        f"`{setup.preset}`, data.corpus.size {setup.size}; seeds {', '.join(map(str, seeds))} "
        f"(mean ± sample std over them); test lines: {len(test)} ({', '.join(sorted(tasks))})."
    )
    (out / f"{name}.md").write_text(
        f"# {title}\n\n{note}\n\n{details}\n\n{table}\n\nEvery run:\n\n{every_run}\n"
    )
    plot_validation_losses(
        {
            f"{run.variant.name} (seed {run.seed})": validation_curves(run.metrics_csv)
            for run in runs
        },
        out / f"{name}.png",
        title,
    )
    print(f"\n{table}\n\nwrote {out / f'{name}.md'} and {out / f'{name}.png'}", flush=True)
    return table
