"""LightningModule for ``test``: the release's evaluation of a benchmark, batched.

It runs on any number of devices.

Weights come from a released-layout folder (``checkpoint``: config, safetensors, ``qwen.tiktoken``).
Or they come from the Lightning checkpoint that ``trainer.test(ckpt_path=...)`` loads, with the
architecture of a ``preset``: a :class:`~qwen_audio.lit.QwenAudioModule` checkpoint's ``model.*``
keys are this module's. Given both, the folder gives the architecture and tokenizer, and the
Lightning checkpoint's weights replace the folder's.

Generation is greedy as in the release: ``do_sample=False``, ``min_new_tokens=1``, and a stop at the
tokenizer's stop ids (``<|endoftext|>``, or a Qwen2-Audio folder's ``generation_config.json``
``eos_token_id``, as its scripts stop). It is also batch-exact: left padding does not shift
positions, so a batch gives each prompt what it gives alone. The release's padded RoPE does not
(spec §6).

Each rank keeps its predictions. At the end rank 0 gathers them and writes ``predictions.jsonl``,
``metrics.json`` and ``report.md`` (ours beside Table 3, see :mod:`qwen_audio.eval.report`) in
``trainer.default_root_dir``.
"""

from __future__ import annotations

import itertools

import lightning as L
import torch

from qwen_audio.checkpoint import load_pretrained, load_tokenizer, read_config
from qwen_audio.config import QwenAudioConfig
from qwen_audio.eval.datamodule import BenchmarkBatch
from qwen_audio.eval.report import write_results
from qwen_audio.eval.tasks import Prediction, get_benchmark
from qwen_audio.generate import GenerationConfig, answer_batch
from qwen_audio.model import QwenAudio


class BenchmarkEvaluation(L.LightningModule):
    """Answers the official prompts of :class:`~qwen_audio.eval.datamodule.BenchmarkDataModule`'s
    batches and scores the answers per benchmark and source.

    ``config`` and ``tokenizer`` are known once constructed, so the CLI can connect the data module
    to them before the test. The weights are loaded in :meth:`configure_model`.

    Args:
        preset: preset name giving the architecture (and tokenizer) when no ``checkpoint`` folder is
            given.
        checkpoint: a Qwen-Audio released-layout or Qwen2-Audio folder (in its own dtype).
    """

    def __init__(self, preset: str = "tiny", checkpoint: str | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        if checkpoint is None:
            self.config, self.tokenizer = (
                QwenAudioConfig.from_name(preset),
                load_tokenizer(preset=preset),
            )
        else:
            self.config, self.tokenizer = read_config(checkpoint), load_tokenizer(checkpoint)
        self.model: QwenAudio | None = None
        self.predictions: list[tuple[int, Prediction]] = []

    def configure_model(self) -> None:
        if self.model is not None:
            return
        if self.hparams.checkpoint is not None:
            self.model = load_pretrained(self.hparams.checkpoint, config=self.config)
        else:
            self.model = QwenAudio(self.config)

    def on_test_epoch_start(self) -> None:
        self.predictions = []

    def test_step(self, batch: BenchmarkBatch, batch_idx: int) -> None:
        names = {item.benchmark for item in batch.items}
        if len(names) != 1:
            raise ValueError(f"a batch must hold one benchmark's items, got {sorted(names)}")
        benchmark = get_benchmark(names.pop())
        config = GenerationConfig(
            max_new_tokens=benchmark.max_new_tokens,
            min_new_tokens=1,
            do_sample=False,
            stop_ids=self.tokenizer.stop_ids,
        )
        answers = answer_batch(self.model, self.tokenizer, batch.prompts, config)
        for index, item, answer in zip(batch.indices, batch.items, answers):
            self.predictions.append((index, Prediction(item, answer.text)))

    def on_test_epoch_end(self) -> None:
        predictions = self.predictions
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, predictions)
            predictions = list(itertools.chain.from_iterable(gathered))
        if self.trainer.is_global_zero:
            ordered = [
                prediction for _, prediction in sorted(predictions, key=lambda pair: pair[0])
            ]
            datamodule = self.trainer.datamodule
            report = write_results(
                ordered,
                self.trainer.default_root_dir,
                self._model_name(),
                datamodule.train_answers if datamodule is not None else None,
            )
            print(report, flush=True)

    def _model_name(self) -> str:
        name = self.hparams.checkpoint or f"preset {self.hparams.preset}"
        if self.trainer.ckpt_path:
            name += f", weights from {self.trainer.ckpt_path}"
        return name
