"""The files an evaluation writes: every prediction, the scores per benchmark and source, and a
Markdown report that puts ours beside the paper's Table 3."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

from qwen_audio.eval.tasks import Prediction, get_benchmark, score_predictions

PREDICTIONS_FILE, METRICS_FILE, REPORT_FILE = "predictions.jsonl", "metrics.json", "report.md"


def write_results(
    predictions: list[Prediction],
    folder: str,
    model_name: str,
    train_answers: Mapping[str, Sequence[str]] | None = None,
) -> str:
    """Write ``predictions.jsonl``, ``metrics.json`` and ``report.md`` into ``folder``.

    It returns the report.

    ``train_answers`` (per benchmark, of its training split) give the majority baseline."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, PREDICTIONS_FILE), "w", encoding="utf-8") as file:
        for prediction in predictions:
            file.write(json.dumps(prediction.to_json(), ensure_ascii=False) + "\n")
    metrics = score_predictions(predictions, train_answers)
    with open(os.path.join(folder, METRICS_FILE), "w", encoding="utf-8") as file:
        json.dump(metrics, file, indent=2, ensure_ascii=False)
    report = markdown_report(metrics, model_name)
    with open(os.path.join(folder, REPORT_FILE), "w", encoding="utf-8") as file:
        file.write(report)
    return report


def markdown_report(
    metrics: dict[str, dict[str, dict[str, float | str | None]]], model_name: str
) -> str:
    """One row per benchmark, source and metric.

    Each row has the paper's Table 3 number where the paper reports one.
    """
    lines = [
        f"# Evaluation of {model_name}",
        "",
        "| benchmark | source | items | metric | ours | paper (Table 3) |",
        "|---|---|---|---|---|---|",
    ]
    for name, sources in metrics.items():
        benchmark = get_benchmark(name)
        for source, scores in sources.items():
            paper = benchmark.paper_numbers(source)
            for metric, value in scores.items():
                if metric != "count":
                    ours = _format(value)
                    reference = f"{paper[metric]:g}" if metric in paper else "-"
                    lines.append(
                        f"| {name} | {source} | {scores['count']} | {metric} | {ours} | {reference} |"
                    )
    return "\n".join(lines) + "\n"


def _format(value: float | str | None) -> str:
    """A value as report text: a number to 4 significant digits.

    None (undefined, e.g. no yes/no question) reads n/a. Text (a reason) stays as is."""
    if value is None:
        return "n/a"
    return value if isinstance(value, str) else f"{value:.4g}"
