"""The recipes and the chat on Qwen2-Audio: SFT (decoder or LoRA) from ``--model.init_from`` a Qwen2-Audio folder
on the demo chat corpus, with the ``qwen2-audio-tiny`` preset; the folder is one transformers loads (see
tests/test_qwen2_audio.py for the round trip)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from transformers import Qwen2AudioForConditionalGeneration

from qwen_audio.config import QwenAudioConfig
from qwen_audio.model import QwenAudio
from recipes.sft import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def initial_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("qwen2-audio-tiny")
    torch.manual_seed(0)
    QwenAudio(QwenAudioConfig.from_name("qwen2-audio-tiny")).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("lora", [False, True], ids=["decoder", "lora"])
def test_sft_demo_fine_tunes_a_qwen2_audio_folder(tmp_path, initial_folder, tmp_path_factory, monkeypatch, capsys,
                                                   lora):
    monkeypatch.setenv("QWEN_AUDIO_DEMO_DIR", str(tmp_path_factory.getbasetemp() / "qwen2-demo-corpus"))
    export = tmp_path / "exported"
    override = tmp_path / "override.yaml"
    override.write_text(textwrap.dedent(f"""\
        trainer:
          max_steps: 2
          limit_val_batches: 0
          num_sanity_val_steps: 0
          enable_progress_bar: false
          enable_checkpointing: false
          default_root_dir: {tmp_path}
          logger: false
          callbacks:
            - class_path: qwen_audio.lit.ChatTranscript
              init_args: {{per_group: 1, max_new_tokens: 3}}
            - class_path: qwen_audio.lit.ExportPretrained
              init_args: {{dirpath: {export}}}
        model:
          model: qwen2-audio-tiny
          init_from: {initial_folder}
          lr: 1.0e-2
          warmup_steps: 1
          lora: {"{rank: 4, alpha: 8}" if lora else "null"}
        data:
          demo_size: 1
        """))
    cli = main(["fit", "--config", str(REPO / "recipes/configs/sft/demo.yaml"), "--config", str(override)])
    assert cli.trainer.global_step == 2
    printed = capsys.readouterr().out
    assert "### before SFT" in printed and "### after SFT" in printed
    # The export (LoRA merged) is a Qwen2-Audio folder again: transformers reads the trained weights under its names.
    initial = QwenAudio.from_pretrained(initial_folder)[0].state_dict()
    trained = QwenAudio.from_pretrained(export)[0].state_dict()
    changed = {k for k, v in trained.items() if not torch.equal(v, initial[k])}
    assert "transformer.h.1.mlp.w2.weight" in changed and not any(k.startswith("transformer.audio.") for k in changed)
    assert ("lm_head.weight" in changed) != lora  # LoRA adapts the blocks' linear layers only
    exported = Qwen2AudioForConditionalGeneration.from_pretrained(export).state_dict()
    assert torch.equal(exported["model.language_model.layers.1.mlp.gate_proj.weight"],
                       trained["transformer.h.1.mlp.w2.weight"])
