"""Stage 2, supervised fine-tuning into a chat model (encoder frozen, LLM or LoRA adapters trained
on ChatML conversations): ``python -m recipes.sft fit --config recipes/configs/sft/demo.yaml``."""

from __future__ import annotations

from qwen_audio.data.chat_datamodule import ChatDataModule
from qwen_audio.lit import QwenAudioModule
from recipes.cli import QwenAudioCLI, run


def main(args: list[str] | None = None) -> QwenAudioCLI:
    return run(QwenAudioCLI, QwenAudioModule, ChatDataModule, args)


if __name__ == "__main__":
    main()
