"""The ablation scripts' parts on hand-made cases (manifest filtering, flat prompts, scoring, table
and plot), and one end-to-end run of the SRWT ablation on a tiny model."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from qwen_audio.data.dataset import encode_entry
from qwen_audio.data.demo import build_demo_corpus
from qwen_audio.data.manifest import ManifestEntry, read_manifest, write_manifest
from qwen_audio.prompts import IGNORE_INDEX, TimedWord, encode_task, task_target
from recipes.experiments.common import (
    final_validation_loss,
    markdown_table,
    mean_std,
    plot_validation_losses,
    score_answers,
    validation_curves,
    write_manifest_without,
)
from recipes.experiments.flat_prompts import FlatPromptDataset, encode_flat

# A Lightning CSVLogger file: training rows and validation rows interleaved, empty cells where
# nothing was logged.
METRICS_CSV = """\
epoch,step,train/loss,val/loss,val/loss_asr,val/loss_aqa
0,9,5.0,,,
0,9,,4.5,4.0,5.5
1,19,3.0,,,
1,19,,2.5,2.0,3.5
"""


@pytest.fixture
def clip(tmp_path) -> Path:
    """One second of a 440 Hz tone: 25 audio tokens (spec §1)."""
    path = tmp_path / "clip.wav"
    soundfile.write(path, 0.3 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000), 16000)
    return path


def _labels(example) -> list[int]:
    return [int(label) for label in example.labels if label != IGNORE_INDEX]


def test_validation_curves_table_and_plot(tmp_path):
    (tmp_path / "a.csv").write_text(METRICS_CSV)
    (tmp_path / "b.csv").write_text(METRICS_CSV.replace("2.5,2.0", "2.7,2.1"))
    curves = validation_curves(tmp_path / "a.csv")
    assert curves == {
        "val/loss": [(9, 4.5), (19, 2.5)],
        "val/loss_asr": [(9, 4.0), (19, 2.0)],
        "val/loss_aqa": [(9, 5.5), (19, 3.5)],
    }
    assert final_validation_loss(tmp_path / "b.csv") == 2.7
    table = markdown_table(
        ["variant", "WER", "val", "s"],
        [
            ["with", 0.25, final_validation_loss(tmp_path / "a.csv"), "12"],
            ["without", None, 2.7, "13"],
        ],
    )
    assert table.splitlines() == [
        "| variant | WER | val | s |",
        "|---|---|---|---|",
        "| with | 0.250 | 2.500 | 12 |",
        "| without | n/a | 2.700 | 13 |",
    ]
    png = tmp_path / "curves.png"
    plot_validation_losses(
        {"with": curves, "without": validation_curves(tmp_path / "b.csv")}, png, "title"
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_final_validation_loss_needs_a_validation_row(tmp_path):
    (tmp_path / "m.csv").write_text("epoch,step,train/loss\n0,9,5.0\n")
    with pytest.raises(ValueError, match="m.csv holds no val/loss"):
        final_validation_loss(tmp_path / "m.csv")


def test_manifest_without_a_task(tmp_path, clip):
    entries = [
        ManifestEntry(clip.name, "asr", "one", "en", "en", duration=1.0),
        ManifestEntry(
            clip.name, "srwt", "one", "en", "en", duration=1.0, words=(TimedWord("one", 0.1, 0.5),)
        ),
        ManifestEntry(
            clip.name, "aqa", "yes", None, "en", duration=1.0, question="are there any beeps?"
        ),
    ]
    write_manifest(tmp_path / "train.jsonl", entries)
    kept = read_manifest(
        write_manifest_without(tmp_path / "train.jsonl", tmp_path / "out" / "kept.jsonl", {"srwt"})
    )
    assert [(e.task, e.text, e.question) for e in kept] == [
        ("asr", "one", None),
        ("aqa", "yes", "are there any beeps?"),
    ]
    assert all(
        e.audio == str(clip) for e in kept
    )  # read from another folder, the audio still resolves
    with pytest.raises(ValueError, match="no line of task.*'mna'"):
        write_manifest_without(tmp_path / "train.jsonl", tmp_path / "x.jsonl", {"mna"})


def test_flat_prompt_is_audio_then_one_dataset_token(demo, clip):
    entry = ManifestEntry(str(clip), "asr", "one two", "en", "en", duration=1.0)
    example = encode_flat(demo, entry, "one two")
    target = demo.encode("one two")
    audio = [
        demo.special_id("<audio>"),
        *[demo.special_id("[[[AUDIO:modality]]]")] * 25,
        demo.special_id("</audio>"),
    ]
    assert example.ids == [*audio, demo.special_id("<|extra_0|>"), *target, demo.eod]
    assert example.labels == [IGNORE_INDEX] * 28 + [*target, demo.eod]
    assert encode_flat(demo, entry).ids == example.ids[:28]  # the generation prompt
    zh = ManifestEntry(str(clip), "asr", "一二", "zh", "zh", duration=1.0)
    assert encode_flat(demo, zh).ids[-1] == demo.special_id("<|extra_1|>")


def test_flat_prompt_keeps_the_question_and_the_tag_styles_targets(demo, clip):
    aqa = ManifestEntry(
        str(clip), "aqa", "two", None, "en", duration=1.0, question="how many beeps are there?"
    )
    flat = encode_flat(demo, aqa, "two")
    assert flat.ids[27 : 28 + len(demo.encode(aqa.question))] == [
        demo.special_id("<|extra_6|>"),
        *demo.encode(aqa.question),
    ]
    srwt = ManifestEntry(
        str(clip),
        "srwt",
        "one two",
        "en",
        "en",
        duration=1.0,
        words=(TimedWord("one", 0.1, 0.4), TimedWord("two", 0.45, 0.8)),
    )
    for entry in (aqa, srwt):  # loss on exactly the tokens the hierarchical tags put it on
        assert _labels(
            encode_flat(
                demo, entry, task_target(entry.task, entry.text, entry.words, entry.duration)
            )
        ) == _labels(encode_entry(entry, demo))
    prompt = encode_flat(demo, srwt)
    assert prompt.ids[-2:] == [demo.special_id("<|extra_2|>"), demo.special_id("<|0.00|>")]
    with pytest.raises(ValueError, match="must start with <\\|0.00\\|>"):
        encode_flat(demo, srwt, "one two")


def test_flat_prompt_rejects_datasets_outside_the_demo_corpus(demo, clip):
    entry = ManifestEntry(str(clip), "s2tt", "eins", "en", "de", duration=1.0)
    with pytest.raises(ValueError, match="no flat prompt for task 's2tt' with audio_language 'en'"):
        encode_flat(demo, entry, "eins")


def test_flat_dataset_item_differs_from_the_tag_one_only_in_the_prompt(demo, clip):
    entry = ManifestEntry(str(clip), "asr", "one two", "en", "en", duration=1.0)
    flat, tags = FlatPromptDataset([entry], demo)[0], encode_entry(entry, demo)
    torch.testing.assert_close(flat.mels[0], tags.mels[0])
    assert flat.mel_lengths == tags.mel_lengths == [100] and flat.task == "asr"
    tag_prompt = encode_task(
        demo, "asr", str(clip), audio_language="en", load={str(clip): torch.zeros(16000)}
    ).ids
    assert tags.input_ids.tolist()[len(tag_prompt) :] == flat.input_ids.tolist()[28:]


def test_scorers_on_hand_worked_answers(clip):
    """The ablations score as ``recipes.evaluate`` scores the demo corpus.

    That is WER/CER in %, and exact-match accuracy.
    """
    audio = str(clip)
    asr = [
        ManifestEntry(audio, "asr", "one two three four", "en", "en"),
        ManifestEntry(audio, "asr", "一二三四", "zh", "zh"),
    ]
    # en: one substitution in 4 words; zh: one deletion in 4 characters
    assert score_answers(asr, ["one two three five", "一二三"]) == {
        "ASR WER en": 25.0,
        "ASR CER zh": 25.0,
    }
    aqa = [
        ManifestEntry(audio, "aqa", answer, None, "en", question="q?")
        for answer in ("two", "yes", "no")
    ]
    assert score_answers(aqa, ["two", "Yes", "yes"]) == {
        "AQA acc": pytest.approx(1 / 3)
    }  # exact, case-sensitive
    srwt = [
        ManifestEntry(
            audio,
            "srwt",
            "one two",
            "en",
            "en",
            duration=1.0,
            words=(TimedWord("one", 0.1, 0.4), TimedWord("two", 0.45, 0.8)),
        )
    ]
    # reference <|0.00|>one<|0.40|>two<|0.80|> (gaps under 0.2 s join the next word); the generation
    # follows the prompt's <|0.00|>: "on" is a substitution, "two" matches with |0.40-0.40| +
    # |0.90-0.80| s = 100 ms shift
    entry = srwt[0]
    assert (
        task_target(entry.task, entry.text, entry.words, entry.duration)
        == "<|0.00|>one<|0.40|>two<|0.80|>"
    )
    assert score_answers(srwt, ["on<|0.40|>two<|0.90|>"]) == {
        "SRWT WER en": 50.0,
        "SRWT AAS ms en": pytest.approx(100.0),
    }
    # MNA as demo_mna scores it: the whole answer must match (one wrong pitch, one wrong instrument:
    # none right)
    mna = [
        ManifestEntry(audio, "mna", "<|pitch|><|midi_pitch_60|><|instrument|>piano", None, "en")
    ] * 3
    assert score_answers(
        mna,
        [
            "<|pitch|><|midi_pitch_60|><|instrument|>organ",
            "<|pitch|><|midi_pitch_61|><|instrument|>piano",
            "<|pitch|><|midi_pitch_60|><|instrument|>piano",
        ],
    ) == {"MNA acc": pytest.approx(1 / 3)}


def test_mean_std_over_seeds():
    assert mean_std([1.0, 2.0, 3.0]) == "2.000 ± 1.000"  # sample std: sqrt(((1-2)^2 + (3-2)^2) / 2)
    assert mean_std([0.25]) == "0.250"
    assert mean_std([1.0, None]) == "n/a"


@pytest.mark.slow
def test_srwt_ablation_end_to_end(tmp_path, monkeypatch):
    from recipes.experiments import srwt_ablation

    monkeypatch.setenv("QWEN_AUDIO_DEMO_DIR", str(tmp_path / "corpus"))
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))
    table = srwt_ablation.main(
        [
            "--epochs",
            "1",
            "--demo-size",
            "2",
            "--preset",
            "tiny",
            "--seeds",
            "0",
            "1",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    lines = table.splitlines()
    assert (
        lines[0] == "| variant | ASR WER en | ASR CER zh | AQA acc | final val/loss_asr | train s |"
    )
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| with SRWT", "| without SRWT"]
    assert all(" ± " in cell for line in lines[2:] for cell in line.strip("| ").split(" | ")[1:])
    assert (tmp_path / "out" / "srwt_ablation.png").stat().st_size > 0
    assert table in (tmp_path / "out" / "srwt_ablation.md").read_text()
    without = read_manifest(
        tmp_path / "out" / "srwt_ablation_manifests" / "train_without_srwt.jsonl"
    )
    assert without and all(entry.task != "srwt" for entry in without)
    test = [e for e in read_manifest(build_demo_corpus(size=2)["test"]) if e.task in ("asr", "aqa")]
    for run in (
        "demo-all-tasks-seed0",
        "srwt_ablation-without-seed0",
        "demo-all-tasks-seed1",
        "srwt_ablation-without-seed1",
    ):
        lines = (tmp_path / "out" / run / "predictions.jsonl").read_text().splitlines()
        assert sorted(json.loads(line)["audio"] for line in lines) == sorted(e.audio for e in test)

    # Run again with the same --out: every run is finished, so nothing trains and the table is the
    # same.
    def no_training(*args, **kwargs):
        raise AssertionError(f"a finished run was retrained: {args}")

    monkeypatch.setattr(subprocess, "run", no_training)
    assert (
        srwt_ablation.main(
            [
                "--epochs",
                "1",
                "--demo-size",
                "2",
                "--preset",
                "tiny",
                "--seeds",
                "0",
                "1",
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == table
    )
    # A run without its run.json (killed before the end) trains again.
    (tmp_path / "out" / "demo-all-tasks-seed1" / "run.json").unlink()
    with pytest.raises(AssertionError, match="a finished run was retrained"):
        srwt_ablation.main(
            [
                "--epochs",
                "1",
                "--demo-size",
                "2",
                "--preset",
                "tiny",
                "--seeds",
                "1",
                "--out",
                str(tmp_path / "out"),
            ]
        )
