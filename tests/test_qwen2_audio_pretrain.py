"""Multi-task pretraining of the Qwen2-Audio family on its own prompts, the natural-language
instructions its evaluation asks with (where Qwen-Audio's examples start with task tags):

- a training example's prompt is, token for token, the prompt evaluation gives the same item, for
  either family; SRWT's first timestamp is held once, at the end of the prompt;
- a task the family has no instruction for is refused by name;
- ``recipes.pretrain`` trains ``qwen2-audio-tiny`` on the demo corpus (the loss on its one batch
  falls), exports a folder transformers reads, and ``recipes.evaluate`` scores that folder on the
  demo benchmarks.
"""

from __future__ import annotations

import csv
import json
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from transformers import Qwen2AudioForConditionalGeneration

from qwen_audio.checkpoint import load_model, load_tokenizer
from qwen_audio.data import AudioTextDataModule
from qwen_audio.data.dataset import task_example
from qwen_audio.data.demo import DemoCorpus, build_demo_corpus
from qwen_audio.data.manifest import ManifestError, read_manifest
from qwen_audio.eval.datamodule import BenchmarkDataset, corpus_items
from qwen_audio.eval.report import METRICS_FILE, PREDICTIONS_FILE
from qwen_audio.prompts import IGNORE_INDEX, encode_task, task_target
from recipes.evaluate import main as evaluate
from recipes.pretrain import main as pretrain

REPO = Path(__file__).resolve().parents[1]
# The demo test split's first clip of each task, as each family asks it (the AQA question is the
# clip's).
PROMPTS = {
    "qwen-audio": {
        "asr": "<|startoftranscript|><|en|><|transcribe|><|en|><|notimestamps|><|wo_itn|>",
        "srwt": "<|startoftranscript|><|en|><|transcribe|><|en|><|timestamps|><|0.00|>",
        "aqa": "<|startofanalysis|><|en|><|question|>{question}<|answer|>",
    },
    "qwen2-audio": {
        "asr": "Detect the language and recognize the speech: <|en|>",
        "srwt": "Detect the language and recognize the speech with word timestamps: <|en|><|0.00|>",
        "aqa": "Answer the question in English: {question}",
    },
}
PRESETS = {"qwen-audio": "demo", "qwen2-audio": "qwen2-audio-tiny"}


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    """The size-1 demo corpus, built once for this module."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QWEN_AUDIO_DEMO_DIR", str(tmp_path_factory.mktemp("qwen2-pretrain-corpus")))
        yield


@pytest.fixture(scope="module")
def test_entries(demo_dir):
    return read_manifest(build_demo_corpus(size=1)["test"], check_audio=True)


@pytest.mark.parametrize("task", ["asr", "srwt", "aqa"])
@pytest.mark.parametrize("family", ["qwen-audio", "qwen2-audio"])
def test_a_training_example_starts_with_the_prompt_evaluation_gives_its_item(
    family, task, test_entries
):
    tokenizer = load_tokenizer(preset=PRESETS[family])
    assert tokenizer.family == family
    entry = next(e for e in test_entries if e.task == task and e.audio_language in ("en", None))
    target = task_target(entry.task, entry.text, entry.words, entry.duration)
    example = task_example(tokenizer, entry, with_target=True)
    prompt = BenchmarkDataset(corpus_items(DemoCorpus(), [entry]), tokenizer)[0].prompt.ids
    n = len(prompt)
    expected = PROMPTS[family][task].format(question=entry.question)
    assert tokenizer.decode(prompt, [entry.audio]) == f"<audio>{entry.audio}</audio>{expected}"
    assert example.ids[:n] == prompt
    assert (
        set(example.labels[:n]) == {IGNORE_INDEX} and example.labels[n:] == example.ids[n:]
    )  # loss on the target
    if (
        task == "srwt"
    ):  # the target's first timestamp is the prompt's last: held once, where generation finds it
        assert target.startswith("<|0.00|>")
        target = target[len("<|0.00|>") :]
    assert tokenizer.decode(example.ids[n:]) == target + "<|endoftext|>"


def test_a_task_qwen2_audio_has_no_instruction_for_is_refused_by_name():
    tokenizer = load_tokenizer(preset="qwen2-audio-tiny")
    with pytest.raises(ValueError, match="Qwen2-Audio has no prompt for task 'lid'"):
        encode_task(
            tokenizer,
            "lid",
            "a.wav",
            "English",
            audio_language="unknown",
            load={"a.wav": torch.ones(1600)},
        )


def test_the_data_module_refuses_such_a_task_at_its_manifest_line(tmp_path):
    """The same manifest reads for Qwen-Audio, whose tags ask ``lid``; for Qwen2-Audio its line 2 is
    refused when the data is set up, before any step."""
    soundfile.write(tmp_path / "a.wav", np.full(8000, 0.1, np.float32), 16000)
    line = '{{"audio": "a.wav", "task": "{}", "text": "{}", "audio_language": "en", "text_language": "en"}}\n'
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(line.format("asr", "one") + line.format("lid", "English"))
    for preset, refused in (("tiny", False), ("qwen2-audio-tiny", True)):
        data = AudioTextDataModule(train=[str(manifest)])
        data.connect(load_tokenizer(preset=preset), n_mels=80)
        if refused:
            with pytest.raises(
                ManifestError, match=rf"^{re.escape(str(manifest))}:2: task: unknown task 'lid'"
            ):
                data.setup("fit")
        else:
            data.setup("fit")
            assert [e.task for e in data.entries["train"][0]] == ["asr", "lid"]


def _losses(root: Path) -> dict[str, list[float]]:
    """Each logged training loss (``train/loss`` and per task) by step, from the CSV log."""
    losses: dict[str, list[float]] = {}
    for row in csv.DictReader(next(root.glob("lightning_logs/version_*/metrics.csv")).open()):
        for name, value in row.items():
            if name.startswith("train/loss") and value:
                losses.setdefault(name, []).append(float(value))
    return losses


def test_pretraining_recipe_trains_qwen2_audio_tiny_on_its_instructions(demo_dir, tmp_path):
    export = tmp_path / "pretrained"
    override = tmp_path / "override.yaml"
    override.write_text(
        textwrap.dedent(f"""\
        trainer:
          max_steps: 8
          log_every_n_steps: 1
          limit_val_batches: 0
          num_sanity_val_steps: 0
          enable_progress_bar: false
          enable_checkpointing: false
          default_root_dir: {tmp_path}
          logger:
            class_path: lightning.pytorch.loggers.CSVLogger
            init_args: {{save_dir: {tmp_path}}}
          callbacks:
            - class_path: qwen_audio.lit.ExportPretrained
              init_args: {{dirpath: {export}}}
        model:
          preset: qwen2-audio-tiny
          lr: 1.0e-2
          warmup_steps: 1
        data:
          corpus:
            init_args:
              size: 1
          num_buckets: 1
          max_seconds: 80.0
        """)
    )
    cli = pretrain(
        [
            "fit",
            "--config",
            str(REPO / "recipes/configs/pretrain/demo.yaml"),
            "--config",
            str(override),
        ]
    )
    # one bucket, one batch an epoch (the 12 training examples): the loss falls by learning, not by
    # another batch
    assert cli.trainer.global_step == 8 and cli.trainer.num_training_batches == 1
    losses = _losses(tmp_path)
    assert set(losses) == {
        "train/loss",
        *(f"train/loss_{task}" for task in ("asr", "srwt", "mna", "asc", "aqa")),
    }
    for name, values in losses.items():
        assert len(values) == 8 and values[-1] < 0.85 * values[0], (name, values)

    # The export is a Qwen2-Audio folder: transformers reads the trained weights under its names.
    trained = load_model(export)[0].state_dict()
    assert torch.equal(
        trained["transformer.h.1.mlp.w2.weight"], cli.model.model.transformer.h[1].mlp.w2.weight
    )
    exported = Qwen2AudioForConditionalGeneration.from_pretrained(export).state_dict()
    assert torch.equal(
        exported["model.language_model.layers.1.mlp.gate_proj.weight"],
        trained["transformer.h.1.mlp.w2.weight"],
    )

    # Evaluation reads the corpus back from the export and asks each demo benchmark with the
    # family's instruction.
    out = tmp_path / "evaluate"
    evaluate(
        [
            "test",
            "--config",
            str(REPO / "recipes/configs/evaluate/demo.yaml"),
            "--model.checkpoint",
            str(export),
            "--trainer.default_root_dir",
            str(out),
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    predictions = [
        json.loads(line)
        for line in (out / PREDICTIONS_FILE).read_text(encoding="utf-8").splitlines()
    ]
    benchmarks = {
        "demo_asr_en",
        "demo_asr_zh",
        "demo_srwt_en",
        "demo_srwt_zh",
        "demo_mna",
        "demo_asc",
        "demo_aqa",
    }
    assert {p["benchmark"] for p in predictions} == benchmarks
    assert set(json.loads((out / METRICS_FILE).read_text(encoding="utf-8"))) == benchmarks
