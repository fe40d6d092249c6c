"""The evaluation recipe: official prompts equal the release scripts' strings, the release-schema
reader stops at a bad line naming it, scores are grouped by source, the evaluate YAMLs validate for
every benchmark, and the demo evaluation runs end to end on a tiny random checkpoint, given as a
released-layout folder or as a Lightning checkpoint; Qwen2-Audio is asked in its release's words."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import lightning
import numpy as np
import pytest
import soundfile
import torch

from qwen_audio.checkpoint import save_pretrained
from qwen_audio.config import ConfigError, QwenAudioConfig
from qwen_audio.data.demo import (
    CORPUS_RECORD,
    DemoCorpus,
    build_demo_corpus,
    corpus_fingerprint,
    corpus_record,
)
from qwen_audio.data.demo.corpora import recorded_corpus
from qwen_audio.data.manifest import ManifestError, read_manifest
from qwen_audio.eval.datamodule import (
    BenchmarkDataModule,
    BenchmarkDataset,
    benchmark_batches,
)
from qwen_audio.eval.report import METRICS_FILE, PREDICTIONS_FILE, REPORT_FILE
from qwen_audio.eval.tasks import (
    BENCHMARKS,
    BenchmarkItem,
    Prediction,
    get_benchmark,
    read_benchmark_file,
    score_predictions,
)
from qwen_audio.model import QwenAudio
from qwen_audio.prompts import encode_text, task_target
from qwen_audio.qwen2_audio.prompts import task_instruction
from qwen_audio.tokenizer import DEMO_RANKS_FILE
from recipes.evaluate import main

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "recipes" / "configs" / "evaluate" / "demo.yaml"
PAPER_CONFIG = REPO / "recipes" / "configs" / "evaluate" / "paper.yaml"
# The paper's benchmarks through paper.yaml and --data.benchmark, and the demo through its own YAML.
CONFIGS = [(PAPER_CONFIG, name) for name in BENCHMARKS if not name.startswith("demo_")] + [
    (DEMO_CONFIG, "demo")
]
DEMO_SOURCES = {
    "demo_asr_en",
    "demo_asr_zh",
    "demo_srwt_en",
    "demo_srwt_zh",
    "demo_mna",
    "demo_asc",
    "demo_aqa",
}
ROBUSTNESS_SOURCES = {
    f"demo_asr_{lang}_{row}" for lang in ("en", "zh") for row in ("noisy", "unseen")
}

# The prompt templates of QwenLM/Qwen-Audio eval_audio/evaluate_*.py, filled in by hand as each
# script fills them.
RELEASE_PROMPTS = [
    (
        "librispeech",
        "librispeech_test_clean",
        None,
        "<audio>a.flac</audio><|startoftranscript|><|en|><|transcribe|><|en|><|notimestamps|><|wo_itn|>",
    ),
    (
        "aishell1",
        "aishell1_test",
        None,
        "<audio>a.flac</audio><|startoftranscript|><|zh|><|transcribe|><|zh|><|notimestamps|><|wo_itn|>",
    ),
    (
        "aishell2",
        "aishell2_ios",
        None,
        "<audio>a.flac</audio><|startoftranscript|><|zh|><|transcribe|><|zh|><|notimestamps|><|wo_itn|>",
    ),
    (
        "covost2",
        "covost2_fr_en_test",
        None,
        "<audio>a.flac</audio><|startoftranscript|><|fr|><|translate|><|en|><|notimestamps|><|itn|>",
    ),
    (
        "clotho",
        "clotho",
        None,
        "<audio>a.flac</audio><|startofanalysis|><|unknown|><|caption|><|en|><|notimestamps|><|caption_clotho|>",
    ),
    (
        "srwt",
        "aishell2",
        None,
        "<audio>a.flac</audio><|startoftranscript|><|zh|><|transcribe|><|zh|><|timestamps|><|0.00|>",
    ),
    (
        "cochlscene",
        "cochlscene",
        None,
        "<audio>a.flac</audio><|startofanalysis|><|unknown|><|keyword|><|en|><|notimestamps|><|scene|>",
    ),
    (
        "tut2017",
        "tut2017",
        None,
        "<audio>a.flac</audio><|startofanalysis|><|unknown|><|keyword|><|en|><|notimestamps|><|scene|>",
    ),
    (
        "meld",
        "meld",
        None,
        "<audio>a.flac</audio><|startofanalysis|><|en|><|keyword|><|en|><|notimestamps|><|emotion_recognition|>",
    ),
    (
        "clothoaqa",
        "clothoaqa",
        "is it raining?",
        "<audio>a.flac</audio><|startofanalysis|><|en|><|question|>is it raining?<|answer|>",
    ),
    (
        "vocalsound",
        "vocalsound",
        None,
        "<audio>a.flac</audio><|startofanalysis|><|en|><|keyword|><|en|><|notimestamps|><|vocal_classification|>",
    ),
    (
        "nsynth",
        "nsynth",
        None,
        "<audio>a.flac</audio><|startofanalysis|><|unknown|><|keyword|><|en|><|notimestamps|><|note_analysis|>",
    ),
]


@pytest.mark.parametrize(
    "name, source, question, expected", RELEASE_PROMPTS, ids=[p[0] for p in RELEASE_PROMPTS]
)
def test_official_prompt_is_the_release_string(name, source, question, expected):
    assert (
        get_benchmark(name).prompt(BenchmarkItem("a.flac", "x", source, name, question)) == expected
    )


# Qwen2-Audio's prompts after the audio: the "prompt" fields of the evaluation files named in
# QwenLM/Qwen2-Audio eval_audio/EVALUATION.md (ASR, CoVoST2 with our language names, MELD,
# VocalSound) and its model card's caption.
QWEN2_RELEASE_PROMPTS = [
    (
        "librispeech",
        "librispeech_test_clean",
        "<audio>a.flac</audio>Detect the language and recognize the speech: <|en|>",
    ),
    (
        "aishell2",
        "aishell2_ios",
        "<audio>a.flac</audio>Detect the language and recognize the speech: <|zh|>",
    ),
    (
        "covost2",
        "covost2_en_de_test",
        "<audio>a.flac</audio>Detect the language and translate the speech into German: <|en|>",
    ),
    ("meld", "meld", "<audio>a.flac</audio>Recognize the emotion with keywords in English:"),
    (
        "vocalsound",
        "vocalsound",
        "<audio>a.flac</audio>Classify the human vocal sound to VocalSound in English:",
    ),
    ("clotho", "clotho", "<audio>a.flac</audio>Generate the caption in English:"),
]


@pytest.mark.parametrize(
    "name, source, expected", QWEN2_RELEASE_PROMPTS, ids=[p[0] for p in QWEN2_RELEASE_PROMPTS]
)
def test_qwen2_audio_prompt_is_the_release_string(name, source, expected):
    assert (
        get_benchmark(name).prompt(BenchmarkItem("a.flac", "x", source, name), "qwen2-audio")
        == expected
    )


def test_qwen2_audio_prompt_refusals_name_the_task_and_field():
    with pytest.raises(ValueError, match="Qwen2-Audio has no prompt for task 'sv'"):
        task_instruction("sv")
    with pytest.raises(ValueError, match="task 'asr' needs audio_language"):
        task_instruction("asr")
    with pytest.raises(ValueError, match="text_language 'xx' is not one of"):
        task_instruction("s2tt", audio_language="en", text_language="xx")


def test_release_generation_lengths_and_batch_sizes():
    lengths = {name: BENCHMARKS[name].max_new_tokens for name, *_ in RELEASE_PROMPTS}
    assert lengths == {
        "librispeech": 256,
        "aishell1": 256,
        "aishell2": 256,
        "covost2": 256,
        "clotho": 30,
        "srwt": 256,
        "cochlscene": 10,
        "tut2017": 10,
        "meld": 4,
        "clothoaqa": 4,
        "vocalsound": 4,
        "nsynth": 30,
    }
    assert {name for name, b in BENCHMARKS.items() if b.batch_size == 20} == {
        "librispeech",
        "aishell1",
        "aishell2",
        "cochlscene",
        "tut2017",
    }  # EVALUATION.md; the others use 8


@pytest.fixture
def clip(tmp_path) -> Path:
    path = tmp_path / "a.flac"
    soundfile.write(path, 0.1 * np.sin(np.arange(8000) / 5.0), 16000)
    return path


@pytest.mark.parametrize(
    "name, source, question",
    [("covost2", "covost2_fr_en_test", None), ("clothoaqa", "clothoaqa", "is it raining?")],
)
def test_dataset_tokenizes_the_official_prompt(released, clip, name, source, question):
    """The ids fed to the model are the release's tokenization of the prompt text.

    Special-token text = tokens.
    """
    item = BenchmarkItem(str(clip), "x", source, name, question)
    sample = BenchmarkDataset([item], released)[0]
    waveform = sample.prompt.waveforms[0]
    expected = encode_text(
        released, get_benchmark(name).prompt(item), load={str(clip): waveform}
    ).ids
    assert sample.prompt.ids == expected


def _write_lines(path: Path, lines: list[dict]) -> Path:
    path.write_text(
        "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8"
    )
    return path


def test_reader_resolves_audio_against_the_file_folder(tmp_path, clip):
    path = _write_lines(
        tmp_path / "eval.jsonl", [{"audio": "a.flac", "gt": "hello", "source": "librispeech_dev"}]
    )
    assert read_benchmark_file(path, "librispeech") == [
        BenchmarkItem(str(clip), "hello", "librispeech_dev", "librispeech")
    ]


@pytest.mark.parametrize(
    "benchmark, bad_line, message",
    [
        (
            "librispeech",
            {"audio": "a.flac", "source": "s"},
            r"eval\.jsonl:2: gt: missing required field",
        ),
        (
            "librispeech",
            {"audio": "gone.flac", "gt": "x", "source": "s"},
            r"eval\.jsonl:2: audio: file not found: .*gone",
        ),
        (
            "clothoaqa",
            {"audio": "a.flac", "gt": "yes", "source": "s"},
            r"eval\.jsonl:2: question: missing required",
        ),
        (
            "clotho",
            {"audio": "a.flac", "gt": "one caption", "source": "s"},
            r"eval\.jsonl:2: gt: must be a non-empty list",
        ),
        (
            "covost2",
            {"audio": "a.flac", "gt": "x", "source": "covost2_xx_en_test"},
            r"eval\.jsonl:2: source: .*'xx'",
        ),
    ],
)
def test_reader_stops_at_a_bad_line_naming_it(tmp_path, clip, benchmark, bad_line, message):
    good = {
        "audio": "a.flac",
        "gt": ["a", "b"] if benchmark == "clotho" else "x",
        "source": "covost2_en_de_test",
        "question": "is it raining?",
    }
    path = _write_lines(tmp_path / "eval.jsonl", [good, bad_line])
    with pytest.raises(ManifestError, match=message):
        read_benchmark_file(path, benchmark)


def _prediction(benchmark: str, source: str, gt: str, response: str) -> Prediction:
    return Prediction(BenchmarkItem("a.flac", gt, source, benchmark), response)


def test_scores_are_grouped_by_source():
    predictions = [
        _prediction("meld", "meld_a", "joy", "joy"),
        _prediction("meld", "meld_b", "sadness", "sadness"),
        _prediction("meld", "meld_a", "anger", "joy"),
        _prediction("meld", "meld_a", "joy", "joy"),
        _prediction("clothoaqa", "clotho_aqa", "yes", "no"),
        _prediction("clothoaqa", "clotho_aqa", "three", "three"),
        _prediction("clothoaqa", "other_aqa", "yes", "yes"),
        _prediction("librispeech", "librispeech_test_clean", "a b c d", "a x c d"),
        _prediction("librispeech", "librispeech_test_other", "a b", "a b"),
    ]
    # majority_accuracy: always giving the training split's most common answer, "sadness": none
    # of meld_a's 3 and meld_b's 1, though "joy" is meld_a's most common reference; none where no
    # training answers are given
    scores = score_predictions(predictions, {"meld": ["sadness", "joy", "sadness", "anger"]})
    assert scores["meld"] == {
        "meld_a": {"count": 3, "accuracy": pytest.approx(2 / 3), "majority_accuracy": 0.0},
        "meld_b": {"count": 1, "accuracy": 1.0, "majority_accuracy": 1.0},
    }
    # the yes/no column only for Clotho-AQA sources, as evaluate_aqa.py
    assert scores["clothoaqa"] == {
        "clotho_aqa": {"count": 2, "accuracy": 0.5, "binary_accuracy": 0.0},
        "other_aqa": {"count": 1, "accuracy": 1.0},
    }
    assert scores["librispeech"]["librispeech_test_clean"]["wer"] == pytest.approx(
        25.0
    )  # 1 of 4 words, in %
    assert scores["librispeech"]["librispeech_test_other"]["wer"] == 0.0


def test_paper_numbers_follow_the_source_split():
    assert get_benchmark("librispeech").paper_numbers("librispeech_test_other") == {"wer": 4.2}
    assert get_benchmark("librispeech").paper_numbers("LibriSpeech/dev-clean") == {"wer": 1.8}
    assert get_benchmark("covost2").paper_numbers("covost2_de_en_test") == {"bleu": 33.9}
    assert get_benchmark("aishell2").paper_numbers("aishell2_android_test") == {"cer": 3.3}
    assert get_benchmark("meld").paper_numbers("anything") == {"accuracy": 0.557}
    assert get_benchmark("librispeech").paper_numbers("librispeech_train") == {}


def test_batches_hold_one_benchmark_and_cover_every_item_once_across_ranks():
    items = [
        BenchmarkItem("a", "x", "s", name) for name in ["meld"] * 5 + ["nsynth"] * 3 + ["meld"]
    ]
    ranks = [benchmark_batches(items, 2, rank, 3) for rank in range(3)]
    batches = [batch for rank in ranks for batch in rank]
    assert sorted(i for batch in batches for i in batch) == list(range(len(items)))
    assert all(
        len({items[i].benchmark for i in batch}) == 1 and len(batch) <= 2 for batch in batches
    )
    assert benchmark_batches(items, None)[0] == [0, 1, 2, 3, 4, 8]  # meld's own batch size, 8


@pytest.mark.parametrize("config, benchmark", CONFIGS, ids=[name for _, name in CONFIGS])
def test_every_config_prints(config, benchmark, capsys):
    chosen = [] if config == DEMO_CONFIG else ["--data.benchmark", benchmark]
    with pytest.raises(SystemExit) as exit_info:
        main(["test", "--config", str(config), *chosen, "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert f"benchmark: {benchmark}" in printed and "use_distributed_sampler: false" in printed


def test_paper_config_needs_a_benchmark(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["test", "--config", str(PAPER_CONFIG)])
    assert exit_info.value.code not in (0, None)
    assert "required: test.data.benchmark" in capsys.readouterr().err


@pytest.fixture(scope="module")
def demo_env(tmp_path_factory):
    """A small demo corpus cached for this module and a tiny random model in the released layout."""
    root = tmp_path_factory.mktemp("evaluate")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QWEN_AUDIO_DEMO_DIR", str(root / "demo-corpus"))
        torch.manual_seed(
            1234
        )  # not the run's seed: a model initialised by the run would differ from this one
        model = QwenAudio(QwenAudioConfig.from_name("tiny"))
        save_pretrained(model, root / "tiny", tokenizer_file=DEMO_RANKS_FILE)
        yield root, model


def _run_demo(out: Path, *args: str) -> list[dict]:
    main(
        [
            "test",
            "--config",
            str(DEMO_CONFIG),
            "--data.corpus.size",
            "2",
            "--trainer.default_root_dir",
            str(out),
            "--trainer.enable_progress_bar",
            "false",
            *args,
        ]
    )
    return [
        json.loads(line)
        for line in (out / PREDICTIONS_FILE).read_text(encoding="utf-8").splitlines()
    ]


@pytest.fixture(scope="module")
def folder_run(demo_env) -> tuple[Path, list[dict]]:
    root, _ = demo_env
    out = root / "from-folder"
    return out, _run_demo(out, "--model.checkpoint", str(root / "tiny"))


def test_demo_evaluation_writes_predictions_metrics_and_report(folder_run):
    out, predictions = folder_run
    assert {p["source"] for p in predictions} == DEMO_SOURCES | ROBUSTNESS_SOURCES
    assert all(p["source"].startswith(p["benchmark"]) for p in predictions)
    assert all(isinstance(p["response"], str) for p in predictions)
    assert all(
        p["audio"].split("/")[-2] == "test_" + p["source"].split("_")[-1]
        for p in predictions
        if p["source"] in ROBUSTNESS_SOURCES
    )
    assert all(
        p["gt"].startswith("<|0.00|>")
        for p in predictions
        if p["benchmark"].startswith("demo_srwt")
    )
    assert all(p["question"] for p in predictions if p["benchmark"] == "demo_aqa")
    metrics = json.loads((out / METRICS_FILE).read_text(encoding="utf-8"))
    assert set(metrics) == DEMO_SOURCES
    for name in metrics:
        asr = name.startswith("demo_asr")
        rows = {f"{name}_{row}" for row in ("noisy", "unseen")} if asr else set()
        assert set(metrics[name]) == {name} | rows, name
    expected = {
        "demo_asr_en": {"wer", "wer_whisper"},
        "demo_asr_zh": {"cer"},
        "demo_srwt_en": {"aas_ms", "aas_ms_release", "wer", "wer_whisper"},
        "demo_srwt_zh": {"aas_ms", "aas_ms_release", "cer"},
        "demo_mna": {"accuracy", "majority_accuracy"},
        "demo_asc": {"accuracy", "majority_accuracy"},
        "demo_aqa": {"accuracy", "majority_accuracy"},
    }
    for name, keys in expected.items():
        assert set(metrics[name][name]) == {"count", *keys}, name
    counts = [scores["count"] for name in metrics for scores in metrics[name].values()]
    assert sum(counts) == len(predictions)
    # the majority baseline is the training split's most common answer, counted from the manifest
    train = read_manifest(build_demo_corpus(seed=0, size=2)["train"])
    for name, task in (("demo_mna", "mna"), ("demo_asc", "asc"), ("demo_aqa", "aqa")):
        answers = Counter(
            task_target(entry.task, entry.text, entry.words, entry.duration)
            for entry in train
            if entry.task == task
        )
        common = answers.most_common(1)[0][0]
        references = [p["gt"] for p in predictions if p["benchmark"] == name]
        expected = sum(r == common for r in references) / len(references)
        assert metrics[name][name]["majority_accuracy"] == expected
    report = (out / REPORT_FILE).read_text(encoding="utf-8")
    assert report.startswith(f"# Evaluation of {out.parent / 'tiny'}")
    assert "| demo_asr_zh | demo_asr_zh | 1 | cer |" in report
    assert "| demo_asr_zh | demo_asr_zh_unseen | 1 | cer |" in report


def test_demo_validation_split_has_the_same_rows_of_other_items(demo_env, folder_run):
    """--data.split validation: the same sources, none of the test split's audio."""
    root, _ = demo_env
    tiny = str(root / "tiny")
    predictions = _run_demo(
        root / "validation", "--model.checkpoint", tiny, "--data.split", "validation"
    )
    assert {p["source"] for p in predictions} == DEMO_SOURCES | ROBUSTNESS_SOURCES
    assert all("/validation" in p["audio"] for p in predictions)
    assert not {p["audio"] for p in predictions} & {p["audio"] for p in folder_run[1]}


def test_lightning_checkpoint_gives_the_weights(demo_env, folder_run):
    """A QwenAudioModule checkpoint (its training hyperparameters do not stop the run) gives its
    ``model.*`` weights. The run's own seed initialises the preset model differently, so equal
    predictions mean the weights came from the checkpoint."""
    root, model = demo_env
    checkpoint = root / "tiny.ckpt"
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "hyper_parameters": {"preset": "tiny", "train": "all", "lr": 2e-3},
            "pytorch-lightning_version": lightning.__version__,
        },
        checkpoint,
    )
    predictions = _run_demo(root / "from-ckpt", "--ckpt_path", str(checkpoint))
    assert predictions == folder_run[1]


def _recorded_export(root: Path, name: str, record: dict) -> Path:
    folder = root / name
    shutil.copytree(root / "tiny", folder)
    (folder / CORPUS_RECORD).write_text(json.dumps(record))
    return folder


def test_demo_evaluation_reads_the_corpus_the_export_records(demo_env, folder_run, monkeypatch):
    """No --data.corpus.size: the size-2 corpus the export names is read, the same items as asking
    for it. No --trainer.default_root_dir: the results go to runs/evaluate/<benchmark>."""
    root, _ = demo_env
    folder = _recorded_export(root, "recorded", corpus_record(seed=0, size=2))
    (root / "recorded-run").mkdir()
    monkeypatch.chdir(root / "recorded-run")
    out = root / "recorded-run" / "runs" / "evaluate" / "demo"
    main(
        [
            "test",
            "--config",
            str(DEMO_CONFIG),
            "--model.checkpoint",
            str(folder),
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    predictions = [
        json.loads(line)
        for line in (out / PREDICTIONS_FILE).read_text(encoding="utf-8").splitlines()
    ]
    assert [p["gt"] for p in predictions] == [p["gt"] for p in folder_run[1]]


@pytest.mark.parametrize(
    "asked, recorded",
    [
        (dict(seed=1, demo_size=None), corpus_record(seed=0, size=2)),
        (dict(seed=None, demo_size=48), corpus_record(seed=0, size=2)),
        (dict(seed=None, demo_size=None), {**corpus_record(seed=0, size=2), "version": "2"}),
    ],
)
def test_demo_evaluation_refuses_another_corpus_than_the_recorded_one(demo_env, asked, recorded):
    root, _ = demo_env
    folder = _recorded_export(
        root, f"mismatch-{asked['seed']}-{asked['demo_size']}-{recorded['version']}", recorded
    )
    with pytest.raises(
        ConfigError, match=f"{CORPUS_RECORD}: the model was trained on the demo corpus"
    ):
        BenchmarkDataModule(
            "demo", checkpoint=str(folder), corpus=DemoCorpus(asked["seed"], asked["demo_size"])
        )
    assert recorded_corpus(None, None, None) == (0, 48, None)  # no record: the defaults


def test_demo_evaluation_refuses_a_corpus_that_other_code_built(demo_env):
    """Same version, seed and size, other manifests: what a generator changed without a DEMO_VERSION
    bump leaves in the cache (on 2026-12-04, notes an octave higher were scored on a cached corpus
    of the old notes)."""
    root, _ = demo_env
    record = corpus_record(seed=0, size=2)
    same = _recorded_export(
        root,
        "fingerprint-same",
        {**record, "fingerprint": corpus_fingerprint(build_demo_corpus(seed=0, size=2))},
    )
    BenchmarkDataModule("demo", checkpoint=str(same), corpus=DemoCorpus()).prepare_data()
    other = _recorded_export(root, "fingerprint-other", {**record, "fingerprint": "0" * 16})
    with pytest.raises(
        ConfigError,
        match="has fingerprint [0-9a-f]{16}, but the model was trained on one of fingerprint 0{16}",
    ):
        BenchmarkDataModule("demo", checkpoint=str(other), corpus=DemoCorpus()).prepare_data()
