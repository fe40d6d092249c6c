"""Evaluate a model on a benchmark of the paper.

Run ``python -m recipes.evaluate test --config recipes/configs/evaluate/paper.yaml`` with
``--data.benchmark NAME``, and with ``--model.checkpoint DIR`` (a released-layout folder),
``--ckpt_path X.ckpt`` (a QwenAudioModule checkpoint), or both. The config
``recipes/configs/evaluate/demo.yaml`` evaluates on the held-out demo corpus. Results go to
``trainer.default_root_dir``, by default ``runs/evaluate/<benchmark>``. See docs/evaluation.md.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from qwen_audio.eval.datamodule import BenchmarkDataModule
from qwen_audio.eval.module import BenchmarkEvaluation
from recipes.cli import QwenAudioCLI, run

RESULTS_ROOT = os.path.join("runs", "evaluate")


class EvaluateCLI(QwenAudioCLI):
    def add_arguments_to_parser(self, parser) -> None:
        super().add_arguments_to_parser(parser)
        parser.link_arguments("model.checkpoint", "data.checkpoint")

    def before_instantiate_classes(self) -> None:
        """Results go to ``runs/evaluate/<benchmark>`` by default.

        ``--trainer.default_root_dir`` names another folder.
        """
        config = self.config[self.subcommand]
        if config.trainer.default_root_dir is None:
            config.trainer.default_root_dir = os.path.join(RESULTS_ROOT, config.data.benchmark)

    def _parse_ckpt_path(self) -> None:
        """Take only the ``preset`` of a ``--ckpt_path`` checkpoint's hyperparameters.

        It goes into the model's config. Lightning would merge them all. A training checkpoint's
        hyperparameters describe training (stage, learning rate, ...). Only the preset, the
        architecture its weights fit, applies to evaluation.
        """
        ckpt_path = self.checked_ckpt_path()
        if ckpt_path and Path(ckpt_path).is_file():
            hparams = torch.load(ckpt_path, weights_only=True, map_location="cpu").get(
                "hyper_parameters", {}
            )
            if "preset" in hparams:
                self.config = self.parser.parse_object(
                    {self.config.subcommand: {"model": {"preset": hparams["preset"]}}}, self.config
                )


def main(args: list[str] | None = None) -> EvaluateCLI:
    return run(EvaluateCLI, BenchmarkEvaluation, BenchmarkDataModule, args)


if __name__ == "__main__":
    main()
