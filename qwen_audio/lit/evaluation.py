"""LightningModule for ``test``: the release's evaluation of a benchmark, batched, on any number of devices.

Weights come from a released-layout folder (``checkpoint``: config, safetensors, ``qwen.tiktoken``) or, for the
architecture of a ``model`` preset, from the Lightning checkpoint that ``trainer.test(ckpt_path=...)`` loads (a
:class:`~qwen_audio.lit.QwenAudioModule` checkpoint: its ``model.*`` keys are this module's). Given both, the folder
gives the architecture and tokenizer and the Lightning checkpoint's weights replace the folder's.

Generation is greedy as in the release (``do_sample=False``, ``min_new_tokens=1``, stop at ``<|endoftext|>``) but
batch-exact: left padding does not shift positions, so a batch gives each prompt what it gives alone (the release's
padded RoPE does not, spec §6). Each rank keeps its predictions; at the end they are gathered and rank 0 writes, in
``trainer.default_root_dir``, ``predictions.jsonl``, ``metrics.json`` and ``report.md`` (ours beside Table 3).
"""

from __future__ import annotations

import itertools
import json
import os

import lightning as L
import torch

from qwen_audio.benchmarks import Prediction, get_benchmark, score_predictions
from qwen_audio.config import QwenAudioConfig
from qwen_audio.data.benchmark_datamodule import load_tokenizer
from qwen_audio.generate import GenerationConfig, generate
from qwen_audio.model import QwenAudio

PREDICTIONS_FILE, METRICS_FILE, REPORT_FILE = "predictions.jsonl", "metrics.json", "report.md"


class BenchmarkEvaluation(L.LightningModule):
    """Generates answers to the official prompts in the batches of
    :class:`~qwen_audio.data.benchmark_datamodule.BenchmarkDataModule` and scores them per benchmark and source.

    Args:
        model: preset name giving the architecture (and tokenizer) when no ``checkpoint`` folder is given.
        checkpoint: a released-layout folder (``QwenAudio.from_pretrained``).
    """

    def __init__(self, model: str = "tiny", checkpoint: str | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.tokenizer = load_tokenizer(model, checkpoint)
        self.model: QwenAudio | None = None
        self.predictions: list[tuple[int, Prediction]] = []

    def configure_model(self) -> None:
        if self.model is not None:
            return
        if self.hparams.checkpoint is not None:
            self.model, _ = QwenAudio.from_pretrained(self.hparams.checkpoint)
        else:
            self.model = QwenAudio(QwenAudioConfig.from_name(self.hparams.model))

    def on_test_epoch_start(self) -> None:
        self.predictions = []

    def test_step(self, batch: dict, batch_idx: int) -> None:
        names = {item.benchmark for item in batch["items"]}
        if len(names) != 1:
            raise ValueError(f"a batch must hold one benchmark's items, got {sorted(names)}")
        benchmark = get_benchmark(names.pop())
        config = GenerationConfig(max_new_tokens=benchmark.max_new_tokens, min_new_tokens=1, do_sample=False,
                                  stop_ids=(self.tokenizer.eod,))
        outputs = generate(self.model, batch["input_ids"], batch["attention_mask"], config,
                           vocab_size=self.tokenizer.n_vocab, audio_mel=batch["audio_mel"],
                           audio_mel_lengths=batch["audio_mel_lengths"])
        for index, item, ids in zip(batch["index"], batch["items"], outputs):
            self.predictions.append((index, Prediction(item, self.tokenizer.decode(ids).strip())))

    def on_test_epoch_end(self) -> None:
        predictions = self.predictions
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, predictions)
            predictions = list(itertools.chain.from_iterable(gathered))
        if self.trainer.is_global_zero:
            ordered = [prediction for _, prediction in sorted(predictions, key=lambda pair: pair[0])]
            report = write_results(ordered, self.trainer.default_root_dir, self._model_name())
            print(report, flush=True)

    def _model_name(self) -> str:
        name = self.hparams.checkpoint or f"preset {self.hparams.model}"
        if self.trainer.ckpt_path:
            name += f", weights from {self.trainer.ckpt_path}"
        return name


def write_results(predictions: list[Prediction], folder: str, model_name: str) -> str:
    """Write ``predictions.jsonl``, ``metrics.json`` and ``report.md`` into ``folder``; returns the report."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, PREDICTIONS_FILE), "w", encoding="utf-8") as file:
        for prediction in predictions:
            file.write(json.dumps(prediction.to_json(), ensure_ascii=False) + "\n")
    metrics = score_predictions(predictions)
    with open(os.path.join(folder, METRICS_FILE), "w", encoding="utf-8") as file:
        json.dump(metrics, file, indent=2, ensure_ascii=False)
    report = markdown_report(metrics, model_name)
    with open(os.path.join(folder, REPORT_FILE), "w", encoding="utf-8") as file:
        file.write(report)
    return report


def markdown_report(metrics: dict[str, dict[str, dict[str, float | str | None]]], model_name: str) -> str:
    """One row per benchmark, source and metric, with the paper's Table 3 number where it reports one."""
    lines = [f"# Evaluation of {model_name}", "",
             "| benchmark | source | items | metric | ours | paper (Table 3) |", "|---|---|---|---|---|---|"]
    for name, sources in metrics.items():
        benchmark = get_benchmark(name)
        for source, scores in sources.items():
            paper = benchmark.paper_numbers(source)
            for metric, value in scores.items():
                if metric != "count":
                    ours = _format(value)
                    reference = f"{paper[metric]:g}" if metric in paper else "-"
                    lines.append(f"| {name} | {source} | {scores['count']} | {metric} | {ours} | {reference} |")
    return "\n".join(lines) + "\n"


def _format(value: float | str | None) -> str:
    """A number to 4 significant digits; None (undefined, e.g. no yes/no question) as n/a; text (a reason) as is."""
    if value is None:
        return "n/a"
    return value if isinstance(value, str) else f"{value:.4g}"
