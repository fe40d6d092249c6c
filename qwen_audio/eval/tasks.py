"""The paper's 12 evaluation benchmarks (Table 2/3), as the release's scripts run them.

Those scripts are ``eval_audio/evaluate_*.py``.

Each :class:`Benchmark` holds what its script fixes. That is the task tags of the official prompt,
the generation length, the per-GPU batch size of ``EVALUATION.md``, and the metrics. It also holds
the Qwen-Audio numbers of the paper's Table 3, so a report can put ours beside them. The ``demo_*``
entries score the embedded demo corpus the same way. A Qwen2-Audio checkpoint is asked the same task
in its family's words (:mod:`qwen_audio.qwen2_audio.prompts`).

Evaluation files use the release's JSON-lines schema, one item a line::

    {"audio": "clips/a.flac", "gt": "the reference", "source": "librispeech_test_clean"}

``question`` is added for question answering, and Clotho's ``gt`` is the list of its five captions.
Scores are computed per ``source`` (the release prints one line per source). CoVoST2 reads its
languages from the source, ``..._{audio language}_{text language}_{split}``, as ``evaluate_st.py``
does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import NamedTuple

from qwen_audio.config import Family
from qwen_audio.data.manifest import ManifestError
from qwen_audio.eval.metrics import (
    accuracy,
    alignment_error_ms,
    binary_accuracy,
    bleu,
    caption_scores,
    error_rate,
    majority_accuracy,
    nsynth_scores,
    release_alignment_error_ms,
)
from qwen_audio.prompts import QUESTION, TASKS, family_prompt, task_prompt
from qwen_audio.tokenizer import AUDIO_END, AUDIO_START

Reference = str | tuple[str, ...]
Scores = dict[
    str, float | str | None
]  # a metric is None where undefined; captioning adds a reason as text
Scorer = Callable[[Sequence[Reference], Sequence[str], str], Scores]


class BenchmarkItem(NamedTuple):
    """One line of an evaluation file.

    It holds the audio, its reference(s), the group it is scored in, and the question.

    A named tuple, so that batches holding items pass through Lightning's device transfer unchanged.
    """

    audio: str
    gt: Reference
    source: str
    benchmark: str
    question: str | None = None


def _transcription_scores(
    refs: Sequence[str], hyps: Sequence[str], source: str, *, language: str
) -> Scores:
    """``evaluate_asr.py``: corpus WER after the release's normalisation, in percent as in Table 3.

    Chinese is scored by CER (the release splits it into characters). English also gets WER with
    Whisper's normaliser beside it."""
    if language == "zh":
        return {"cer": 100 * error_rate(refs, hyps, "zh")}
    scores = {"wer": 100 * error_rate(refs, hyps, language)}
    if language == "en":
        scores["wer_whisper"] = 100 * error_rate(refs, hyps, "en", normalizer="whisper")
    return scores


def _timestamp_scores(
    refs: Sequence[str], hyps: Sequence[str], source: str, *, language: str
) -> Scores:
    """``evaluate_srwt.py``: average alignment shift in ms, and an error rate.

    The error rate is that of the text without timestamps.

    The shift is computed by the release's procedure (Table 3's) and by ours (first word timed too,
    see :mod:`qwen_audio.eval.metrics.alignment`)."""
    return {
        "aas_ms_release": release_alignment_error_ms(refs, hyps),
        "aas_ms": alignment_error_ms(refs, hyps),
        **_transcription_scores(refs, hyps, source, language=language),
    }


def covost_languages(source: str) -> tuple[str, str]:
    """(audio language, text language) of a CoVoST2 source.

    They are ``source.split("_")[-3]`` and ``[-2]`` (evaluate_st.py).
    """
    parts = source.split("_")
    if len(parts) < 3:
        raise ValueError(
            f"source {source!r} does not end in _<audio language>_<text language>_<split>"
        )
    return parts[-3], parts[-2]


def _translation_scores(refs: Sequence[str], hyps: Sequence[str], source: str) -> Scores:
    """``evaluate_st.py``: sacrebleu corpus BLEU with the tokenizer of the target language."""
    return {"bleu": bleu(refs, hyps, covost_languages(source)[1])}


def _accuracy_scores(refs: Sequence[str], hyps: Sequence[str], source: str) -> Scores:
    """Exact, case-sensitive match (``sklearn.metrics.accuracy_score``), as every classification
    script scores."""
    return {"accuracy": accuracy(refs, hyps)}


def _question_scores(refs: Sequence[str], hyps: Sequence[str], source: str) -> Scores:
    """``evaluate_aqa.py``: accuracy, and for Clotho-AQA sources also on the yes/no questions
    alone."""
    scores = {"accuracy": accuracy(refs, hyps)}
    if source.startswith("clotho"):
        scores["binary_accuracy"] = binary_accuracy(refs, hyps)
    return scores


def _caption_scores(refs: Sequence[Sequence[str]], hyps: Sequence[str], source: str) -> Scores:
    return caption_scores([list(r) for r in refs], hyps)


def _note_scores(refs: Sequence[str], hyps: Sequence[str], source: str) -> Scores:
    return nsynth_scores(refs, hyps)


@dataclass(frozen=True)
class Benchmark:
    """One benchmark as its release script runs it.

    ``language`` is the audio language the prompt names (ASR, SRWT, MELD). None means the task's own
    (``unknown`` for sounds) or, for speech translation, the languages in the source. ``paper`` maps
    a split to Table 3's numbers under our metric names. A split matches a source whose ``_``/``-``
    separated words contain the split's words in order. The split ``""`` matches every source.
    """

    name: str
    task: str
    dataset: str
    script: str
    data: str
    max_new_tokens: int
    batch_size: int
    scorer: Scorer
    language: str | None = None
    instruction: str | None = None
    paper: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    @property
    def asks_question(self) -> bool:
        return TASKS[self.task].tag == QUESTION

    @property
    def multiple_references(self) -> bool:
        return self.task == "aac"

    def prompt_options(self, source: str, question: str | None = None) -> dict[str, str | None]:
        """Keyword arguments of the prompt builders for one item.

        The builders are :func:`qwen_audio.prompts.family_prompt` / ``encode_task``.
        """
        if self.task == "s2tt":
            audio_language, text_language = covost_languages(source)
            return {
                "audio_language": audio_language,
                "text_language": text_language,
                "instruction": self.instruction,
            }
        if self.asks_question:
            return {"audio_language": self.language, "question": question}
        return {"audio_language": self.language, "instruction": self.instruction}

    def prompt(self, item: BenchmarkItem, family: Family = "qwen-audio") -> str:
        """The release's prompt text of ``family`` for ``item``, as training asks it
        (:func:`qwen_audio.prompts.family_prompt`).

        The audio comes first. Then come Qwen-Audio's task tags
        (``<audio>a.flac</audio><|startoftranscript|><|en|>...``) or Qwen2-Audio's instruction
        (``<audio>a.flac</audio>Detect the language and recognize the speech: <|en|>``)."""
        text = family_prompt(family, self.task, **self.prompt_options(item.source, item.question))
        return f"{AUDIO_START}{item.audio}{AUDIO_END}{text}"

    def score(self, refs: Sequence[Reference], hyps: Sequence[str], source: str) -> Scores:
        return self.scorer(refs, hyps, source)

    def paper_numbers(self, source: str) -> dict[str, float]:
        """Table 3's numbers for the split ``source`` belongs to (empty when none matches)."""
        words = _words(source)
        matches = [split for split in self.paper if _contains(words, _words(split))]
        return dict(self.paper[max(matches, key=len)]) if matches else {}


def _words(text: str) -> list[str]:
    return [w for w in text.lower().replace("-", "_").replace("/", "_").split("_") if w]


def _contains(words: list[str], part: list[str]) -> bool:
    return any(words[i : i + len(part)] == part for i in range(len(words) - len(part) + 1))


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark(
            "librispeech",
            "asr",
            "LibriSpeech dev-clean, dev-other, test-clean, test-other",
            "evaluate_asr.py",
            "data/asr/librispeech_eval.jsonl",
            256,
            20,
            partial(_transcription_scores, language="en"),
            language="en",
            paper={
                "dev-clean": {"wer": 1.8},
                "dev-other": {"wer": 4.0},
                "test-clean": {"wer": 2.0},
                "test-other": {"wer": 4.2},
            },
        ),
        Benchmark(
            "aishell1",
            "asr",
            "Aishell-1 dev, test",
            "evaluate_asr.py",
            "data/asr/aishell1_eval.jsonl",
            256,
            20,
            partial(_transcription_scores, language="zh"),
            language="zh",
            paper={"dev": {"cer": 1.2}, "test": {"cer": 1.3}},
        ),
        Benchmark(
            "aishell2",
            "asr",
            "Aishell-2 test (Mic, iOS, Android)",
            "evaluate_asr.py",
            "data/asr/aishell2_eval.jsonl",
            256,
            20,
            partial(_transcription_scores, language="zh"),
            language="zh",
            paper={"mic": {"cer": 3.3}, "ios": {"cer": 3.1}, "android": {"cer": 3.3}},
        ),
        Benchmark(
            "covost2",
            "s2tt",
            "CoVoST 2 test",
            "evaluate_st.py",
            "data/st/covost2_eval.jsonl",
            256,
            8,
            _translation_scores,
            instruction="<|itn|>",
            paper={
                "en_de": {"bleu": 25.1},
                "de_en": {"bleu": 33.9},
                "en_zh": {"bleu": 41.5},
                "zh_en": {"bleu": 15.7},
                "es_en": {"bleu": 39.7},
                "fr_en": {"bleu": 38.5},
                "it_en": {"bleu": 36.0},
            },
        ),
        Benchmark(
            "clotho",
            "aac",
            "Clotho evaluation",
            "evaluate_caption.py",
            "data/caption/clotho_eval.jsonl",
            30,
            8,
            _caption_scores,
            instruction="<|caption_clotho|>",
            paper={"": {"CIDEr-D": 0.441, "SPICE": 0.136, "SPIDEr": 0.288}},
        ),
        Benchmark(
            "srwt",
            "srwt",
            "industrial SRWT data (closed; arXiv 2305.11013)",
            "evaluate_srwt.py",
            "data/srwt/industrial_srwt_eval.jsonl",
            256,
            8,
            partial(_timestamp_scores, language="zh"),
            language="zh",
            paper={"": {"aas_ms_release": 51.5}},
        ),
        Benchmark(
            "cochlscene",
            "asc",
            "CochlScene test",
            "evaluate_scene.py",
            "data/asc/cochlscene_eval.jsonl",
            10,
            20,
            _accuracy_scores,
            paper={"": {"accuracy": 0.795}},
        ),
        Benchmark(
            "tut2017",
            "asc",
            "TUT Acoustic Scenes 2017 evaluation",
            "evaluate_scene.py",
            "data/asc/tut2017_eval.jsonl",
            10,
            20,
            _accuracy_scores,
            paper={"": {"accuracy": 0.649}},
        ),
        Benchmark(
            "meld",
            "er",
            "MELD test",
            "evaluate_emotion.py",
            "data/emotion/meld_eval.jsonl",
            4,
            8,
            _accuracy_scores,
            language="en",
            paper={"": {"accuracy": 0.557}},
        ),
        Benchmark(
            "clothoaqa",
            "aqa",
            "Clotho-AQA test",
            "evaluate_aqa.py",
            "data/st/clothoaqa_eval.jsonl",
            4,
            8,
            _question_scores,
            paper={"": {"accuracy": 0.579, "binary_accuracy": 0.749}},
        ),
        Benchmark(
            "vocalsound",
            "vsc",
            "VocalSound test",
            "evaluate_vocal_sound.py",
            "data/vsc/vocalsound_eval.jsonl",
            4,
            8,
            _accuracy_scores,
            paper={"": {"accuracy": 0.9289}},
        ),
        Benchmark(
            "nsynth",
            "mna",
            "NSynth test",
            "evaluate_note_analysis.py",
            "data/mna/nsynth_eval.jsonl",
            30,
            8,
            _note_scores,
            paper={"": {"qualities_map": 0.4742, "instrument_accuracy": 0.7882}},
        ),
        # The held-out split of the embedded demo corpus (qwen_audio.data.demo), one benchmark per
        # task and language. Its utterances are 3 to 6 digits: 32 new tokens hold a transcript, 64
        # one with word timestamps.
        *(
            Benchmark(
                f"demo_asr_{lang}",
                "asr",
                f"demo corpus, {lang} speech",
                "evaluate_asr.py",
                "demo:test",
                32,
                8,
                partial(_transcription_scores, language=lang),
                language=lang,
            )
            for lang in ("en", "zh")
        ),
        *(
            Benchmark(
                f"demo_srwt_{lang}",
                "srwt",
                f"demo corpus, {lang} speech",
                "evaluate_srwt.py",
                "demo:test",
                64,
                8,
                partial(_timestamp_scores, language=lang),
                language=lang,
            )
            for lang in ("en", "zh")
        ),
        Benchmark(
            "demo_mna",
            "mna",
            "demo corpus, synthetic notes",
            "evaluate_note_analysis.py",
            "demo:test",
            30,
            8,
            _accuracy_scores,
        ),
        Benchmark(
            "demo_asc",
            "asc",
            "demo corpus, synthetic scenes",
            "evaluate_scene.py",
            "demo:test",
            10,
            8,
            _accuracy_scores,
        ),
        Benchmark(
            "demo_aqa",
            "aqa",
            "demo corpus, counted beeps and clicks",
            "evaluate_aqa.py",
            "demo:test",
            4,
            8,
            _question_scores,
        ),
    )
}


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


def _required_text(line: dict, name: str) -> str:
    if name not in line:
        raise ManifestError("missing required field", field=name)
    value = line[name]
    if not isinstance(value, str) or not value.strip():
        raise ManifestError(f"must be a non-empty string, got {value!r}", field=name)
    return value


def _parse_item(raw: str, benchmark: Benchmark, folder: str) -> BenchmarkItem:
    try:
        line = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ManifestError(f"malformed JSON: {err.msg} (column {err.colno})") from None
    if not isinstance(line, dict):
        raise ManifestError(f"must be a JSON object, got {type(line).__name__}")
    audio = _required_text(line, "audio")
    source = _required_text(line, "source")
    question = _required_text(line, "question") if benchmark.asks_question else None
    if "gt" not in line:
        raise ManifestError("missing required field", field="gt")
    gt = line["gt"]
    if benchmark.multiple_references:
        if (
            not isinstance(gt, list)
            or not gt
            or not all(isinstance(g, str) and g.strip() for g in gt)
        ):
            raise ManifestError(f"must be a non-empty list of captions, got {gt!r}", field="gt")
        gt = tuple(gt)
    elif not isinstance(gt, str):
        raise ManifestError(f"must be a string, got {type(gt).__name__} {gt!r}", field="gt")
    try:
        task_prompt(benchmark.task, **benchmark.prompt_options(source, question))
    except ValueError as err:
        raise ManifestError(f"gives no {benchmark.name} prompt: {err}", field="source") from None
    path = os.path.join(folder, os.path.expanduser(audio))
    if not os.path.isfile(path):
        raise ManifestError(f"file not found: {path}", field="audio")
    return BenchmarkItem(os.path.normpath(path), gt, source, benchmark.name, question)


def read_benchmark_file(
    path: str | os.PathLike, benchmark: str, audio_root: str | os.PathLike | None = None
) -> list[BenchmarkItem]:
    """The items of an evaluation file in the release's schema, checked line by line.

    A relative ``audio`` path is read against ``audio_root`` (default: the file's folder). A line
    with a missing or ill-typed field, an audio file that does not exist, or a source that gives no
    prompt raises :class:`ManifestError` reading ``path:line: field: reason``.
    """
    spec = get_benchmark(benchmark)
    name = os.fspath(path)
    folder = (
        os.fspath(audio_root) if audio_root is not None else os.path.dirname(os.path.abspath(name))
    )
    items = []
    with open(name, encoding="utf-8") as file:
        for number, raw in enumerate(file, start=1):
            if raw.strip():
                try:
                    items.append(_parse_item(raw, spec, folder))
                except ManifestError as err:
                    raise err.at(name, number) from None
    if not items:
        raise ValueError(f"{name} holds no items")
    return items


@dataclass(frozen=True)
class Prediction:
    """An item with the model's decoded response."""

    item: BenchmarkItem
    response: str

    def to_json(self) -> dict:
        line = {
            "benchmark": self.item.benchmark,
            "source": self.item.source,
            "audio": self.item.audio,
            "gt": list(self.item.gt) if isinstance(self.item.gt, tuple) else self.item.gt,
            "response": self.response,
        }
        if self.item.question is not None:
            line["question"] = self.item.question
        return line


def score_predictions(
    predictions: Iterable[Prediction], train_answers: Mapping[str, Sequence[str]] | None = None
) -> dict[str, dict[str, Scores]]:
    """``{benchmark: {source: {"count": n, metric: value, ...}}}``, each source scored on its own
    items.

    ``train_answers`` maps a benchmark to the answers of its training split (a corpus with a
    training split has them). Beside the accuracy of such a benchmark goes ``majority_accuracy``. It
    is the score of always giving the training split's most common answer
    (:func:`qwen_audio.eval.metrics.majority_accuracy`). Without training answers there is none.
    """
    train_answers = train_answers or {}
    groups: dict[str, dict[str, list[Prediction]]] = {}
    for prediction in predictions:
        groups.setdefault(prediction.item.benchmark, {}).setdefault(
            prediction.item.source, []
        ).append(prediction)
    results: dict[str, dict[str, Scores]] = {}
    for name, sources in groups.items():
        benchmark = get_benchmark(name)
        results[name] = {}
        for source, group in sources.items():
            refs = [p.item.gt for p in group]
            hyps = [p.response for p in group]
            scores: Scores = {"count": len(group), **benchmark.score(refs, hyps, source)}
            if "accuracy" in scores and name in train_answers:
                scores["majority_accuracy"] = majority_accuracy(train_answers[name], refs)
            results[name][source] = scores
    return results
