"""The LightningCLI shared by the recipes: the data module follows the model's preset (tokenizer, vocab)."""

from __future__ import annotations

from lightning.pytorch.cli import LightningCLI

from qwen_audio.data import AudioTextDataModule
from qwen_audio.lit import QwenAudioModule


class QwenAudioCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.model", "data.model")


def main(args: list[str] | None = None) -> QwenAudioCLI:
    return QwenAudioCLI(QwenAudioModule, AudioTextDataModule, args=args, save_config_kwargs={"overwrite": True})
