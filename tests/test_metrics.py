"""Metrics against hand-worked numbers and a direct Levenshtein: never only against the library a
metric wraps (jiwer, sacrebleu, scikit-learn, pycocoevalcap)."""

from __future__ import annotations

import math
import shutil
import sys

import pytest
from sklearn.metrics import accuracy_score

from qwen_audio.eval.metrics import (
    accuracy,
    alignment_error_ms,
    binary_accuracy,
    bleu,
    caption_scores,
    error_rate,
    majority_accuracy,
    majority_answer,
    nsynth_scores,
    parse_note,
    release_alignment_error_ms,
    release_normalize,
    whisper_normalize,
)
from qwen_audio.eval.metrics.captioning import spice_unavailable_reason

needs_java = pytest.mark.skipif(
    shutil.which("java") is None, reason="the PTB tokenizer of captioning needs Java"
)


def levenshtein(reference: list[str], hypothesis: list[str]) -> int:
    """Textbook dynamic programme, independent of jiwer/rapidfuzz."""
    row = list(range(len(hypothesis) + 1))
    for i, ref_unit in enumerate(reference, 1):
        previous, row[0] = row[0], i
        for j, hyp_unit in enumerate(hypothesis, 1):
            previous, row[j] = (
                row[j],
                min(row[j] + 1, row[j - 1] + 1, previous + (ref_unit != hyp_unit)),
            )
    return row[-1]


# --- normalisation
# -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "language", "expected"),
    [
        # special tokens become spaces, spaces collapse, the space before punctuation goes, only the
        # left is stripped
        (
            "<|startoftranscript|><|en|><|transcribe|><|en|><|notimestamps|><|wo_itn|>Hello , world !",
            "en",
            "Hello, world!",
        ),
        ("<|en|>good   morning<|endoftext|>", "en", "good morning "),
        ("one ; two : three ?", "en", "one; two: three?"),
        # Chinese: every whitespace goes, punctuation stays
        ("<|zh|>今天 天气 , 很好 。", "zh", "今天天气,很好。"),
        ("<|0.00|>面<|0.86|>条<|1.17|>", "zh", "面条"),
    ],
)
def test_release_normalize_on_release_examples(text, language, expected):
    assert release_normalize(text, language) == expected


def test_whisper_normalize_expands_titles_and_numbers():
    assert whisper_normalize("Mr. Smith paid twenty dollars.") == "mister smith paid $20"
    assert whisper_normalize("<|en|>The colour, please!") == "the color please"


def test_unknown_language_is_named():
    with pytest.raises(ValueError, match="'cn'"):
        release_normalize("你好", "cn")


# --- WER / CER
# --------------------------------------------------------------------------------------------------


def test_error_rate_hand_worked_release_keeps_punctuation():
    references = ["The cat sat on the mat.", "hello world"]
    hypotheses = ["the cat sat on mat.", "hello world !"]
    # release: lower case only; 1 deletion ("the") + 1 substitution ("world" vs "world!") over 6 + 2
    # words
    assert error_rate(references, hypotheses, "en") == pytest.approx(2 / 8)
    # Whisper's normaliser drops the punctuation: only the deletion is left
    assert error_rate(references, hypotheses, "en", normalizer="whisper") == pytest.approx(1 / 8)


def test_error_rate_whisper_normalizer_counts_mister_as_mr():
    assert error_rate(["Mr. Smith"], ["mister smith"], "en") == pytest.approx(1 / 2)
    assert error_rate(["Mr. Smith"], ["mister smith"], "en", normalizer="whisper") == 0.0


def test_error_rate_chinese_is_by_character():
    # 1 substitution (气 -> 汽) + 1 insertion (啊) over 6 characters; the spaces in the hypothesis
    # do not count
    assert error_rate(["今天天气很好"], ["今天 天汽 很好啊"], "zh") == pytest.approx(2 / 6)


CORPUS = [
    ("the quick brown fox", "the quick brown fox"),
    ("jumps over the lazy dog", "jumped over a lazy lazy dog"),
    ("a b c d e", "e d c b a"),
    ("", "spurious words"),
    ("nothing said", ""),
]


def test_error_rate_is_corpus_levenshtein():
    references, hypotheses = zip(*CORPUS)
    distance = sum(levenshtein(r.split(), h.split()) for r, h in CORPUS)
    length = sum(len(r.split()) for r, _ in CORPUS)
    assert error_rate(references, hypotheses, "en") == pytest.approx(distance / length, abs=1e-12)
    assert distance / length == pytest.approx(11 / 16)  # 0 + 3 + 4 + 2 + 2 over 4 + 5 + 5 + 0 + 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(references=["a"], hypotheses=["a", "b"]), "1 references but 2 hypotheses"),
        (dict(references=[], hypotheses=[]), "no references"),
        (dict(references="a b", hypotheses="a b"), "one string"),
        (dict(references=["<|en|>"], hypotheses=["a"]), "no word"),
        (dict(references=["a"], hypotheses=["a"], normalizer="basic"), "'basic'"),
        (
            dict(references=["你好"], hypotheses=["你好"], language="zh", normalizer="whisper"),
            "English",
        ),
    ],
)
def test_error_rate_bad_input(kwargs, message):
    kwargs.setdefault("language", "en")
    with pytest.raises(ValueError, match=message):
        error_rate(**kwargs)


# --- BLEU
# --------------------------------------------------------------------------------------------------


def test_bleu_chinese_tokenizes_characters_unlike_13a():
    references, hypotheses = ["我很喜欢这只小猫"], ["我很喜欢这只小狗"]
    # by character: n-gram precisions 7/8, 6/7, 5/6, 4/5, equal lengths -> 100 * (1/2) ** (1/4)
    assert bleu(references, hypotheses, "zh") == pytest.approx(100 * 0.5**0.25)
    # 13a keeps the sentence as one token, which differs
    assert bleu(references, hypotheses, "en") == 0.0


def test_bleu_13a_hand_worked():
    references = ["the cat is on the mat", "there is a cat on the mat"]
    hypotheses = ["the cat is on a mat", "a cat is on the mat"]
    # corpus n-gram matches / totals over both pairs (clipped by the reference's counts):
    #   1-grams 5 + 6 of 6 + 6, 2-grams 3 + 3 of 5 + 5 ("the cat", "cat is", "is on"; "a cat",
    #   "on the", "the mat"), 3-grams 2 + 1 of 4 + 4, 4-grams 1 + 0 of 3 + 3; hypotheses 12 words
    #   against references 13: brevity penalty exp(1 - 13/12)
    precisions = (11 / 12) * (6 / 10) * (3 / 8) * (1 / 6)
    expected = 100 * math.exp(1 - 13 / 12) * precisions**0.25
    assert bleu(references, hypotheses, "de") == pytest.approx(expected)
    assert bleu(references, references, "de") == pytest.approx(100.0)


def test_bleu_japanese_without_mecab_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "MeCab", None)
    with pytest.raises(ImportError, match=r"sacrebleu\[ja\]"):
        bleu(["猫が好きです"], ["猫が好きです"], "ja")


def test_bleu_japanese_uses_mecab():
    pytest.importorskip("MeCab", reason="sacrebleu[ja] is not installed")
    pytest.importorskip("ipadic", reason="sacrebleu[ja] is not installed")
    # MeCab words: 私 / は / 猫 / が / 好き / です against 私 / は / 猫 / が / 好き: every n-gram
    # of the hypothesis matches, 5 words against 6 -> 100 * exp(1 - 6/5). By character (8 against
    # 6) it would be 100 * exp(1 - 8/6), and 13a keeps each sentence as one token (0).
    assert bleu(["私は猫が好きです"], ["私は猫が好き"], "ja") == pytest.approx(
        100 * math.exp(1 - 6 / 5)
    )


# --- accuracy
# --------------------------------------------------------------------------------------------------


def test_accuracy_is_exact_and_case_sensitive():
    references = ["dog", "Cat", "yes", "no", "Yes", "rain"]
    hypotheses = ["dog", "cat", "Yes", "no", "Yes", "rain "]
    assert accuracy(references, hypotheses) == pytest.approx(3 / 6)
    assert accuracy(references, hypotheses) == accuracy_score(references, hypotheses)
    # yes/no subset: ("yes", "Yes") wrong, ("no", "no") and ("Yes", "Yes") right
    assert binary_accuracy(references, hypotheses) == pytest.approx(2 / 3)


def test_binary_accuracy_without_yes_no_questions_is_none():
    assert binary_accuracy(["dog"], ["dog"]) is None


# --- NSynth
# --------------------------------------------------------------------------------------------------

NOTE_REFERENCES = [
    "<|pitch|><|midi_pitch_60|><|velocity|><|midi_velocity_100|><|instrument|>keyboard_acoustic"
    "<|sonic|>bright, percussive",
    "<|instrument|>guitar_electronic<|sonic|>dark<|pitch|><|midi_pitch_62|><|velocity|><|midi_velocity_75|>",
    "<|pitch|><|midi_pitch_64|><|velocity|><|midi_velocity_50|><|instrument|>bass_synthetic",
    "<|pitch|><|midi_pitch_72|><|velocity|><|midi_velocity_127|><|instrument|>flute_acoustic<|sonic|>reverb",
]
NOTE_HYPOTHESES = [
    "<|pitch|><|midi_pitch_60|><|velocity|><|midi_velocity_100|><|instrument|>keyboard_acoustic<|sonic|>bright",
    "<|pitch|><|midi_pitch_74|><|velocity|><|midi_velocity_75|><|instrument|>guitar_electronic<|sonic|>dark, reverb",
    "<|velocity|><|midi_velocity_50|><|instrument|>bass_synthetic<|sonic|>fast_decay, loud",
    "<|pitch|><|midi_pitch_73|><|velocity|><|midi_velocity_100|><|instrument|>flute_synthetic<|sonic|>reverb",
]


def test_parse_note_as_the_release():
    note = parse_note(NOTE_REFERENCES[1])
    assert (note.pitch, note.velocity, note.instrument, note.qualities) == (
        62,
        75,
        "guitar_electronic",
        ("dark",),
    )
    missing = parse_note(NOTE_HYPOTHESES[2])
    assert (missing.pitch, missing.qualities) == (
        128,
        ("fast_decay",),
    )  # unknown quality "loud" dropped
    assert parse_note("<|pitch|><|midi_pitch_x|>").pitch == 128


def test_nsynth_scores_hand_worked():
    scores = nsynth_scores(NOTE_REFERENCES, NOTE_HYPOTHESES)
    assert scores["instrument_accuracy"] == pytest.approx(3 / 4)  # flute_synthetic is wrong
    assert scores["velocity_accuracy"] == pytest.approx(3 / 4)  # 100 for 127
    assert scores["pitch_accuracy"] == pytest.approx(1 / 4)  # only 60
    # pitch class: 60/60 and 74/62 agree; the missing pitch and 73/72 do not
    assert scores["pitch_chroma_accuracy"] == pytest.approx(2 / 4)
    # the release's columns are the sorted pitches seen, 60 62 64 72 73 74 128 -> 0..6: (0,0) (1,5)
    # (2,6) (3,4)
    assert scores["pitch_chroma_accuracy_release"] == pytest.approx(1 / 4)
    # classes bright dark fast_decay percussive reverb, binary scores as the release passes them: AP
    # 1, 1, 0 (no positive reference), 1/4 (one positive among 4 tied zeros), 1/2 (2 predicted, 1
    # right)
    assert scores["qualities_map"] == pytest.approx((1 + 1 + 0 + 0.25 + 0.5) / 5)


def test_nsynth_without_any_quality_has_no_map():
    assert (
        nsynth_scores(["<|pitch|><|midi_pitch_60|>"], ["<|pitch|><|midi_pitch_60|>"])[
            "qualities_map"
        ]
        is None
    )


# --- AAS
# --------------------------------------------------------------------------------------------------

AAS_REFERENCE = "<|0.00|><|sil|><|0.50|>the<|0.80|>cat<|1.10|>sat<|1.40|>down<|1.90|>"
# the generation continues the prompt's <|0.00|>; "big" is inserted and "down" deleted
AAS_HYPOTHESIS = "<|sil|><|0.52|>the<|0.78|>big<|1.00|>cat<|1.15|>sat<|1.50|>"


def test_alignment_error_with_an_insertion_and_a_deletion():
    # the: |0.50-0.52| + |0.80-0.78| = 0.04; cat: |0.80-1.00| + |1.10-1.15| = 0.25; sat: |1.10-1.15|
    # + |1.40-1.50| = 0.15; big and down are not timed: (0.04 + 0.25 + 0.15) / 3 s = 146.67 ms
    assert alignment_error_ms([AAS_REFERENCE], [AAS_HYPOTHESIS]) == pytest.approx(440 / 3)


def test_alignment_uses_edit_distance_not_difflib():
    # a b c against a c b: the minimum-edit alignment keeps only "a" (0.1 s); difflib would also
    # pair "b" (2 s)
    reference = "<|0.00|>a<|1.00|>b<|2.00|>c<|3.00|>"
    assert alignment_error_ms([reference], ["a<|1.10|>c<|2.00|>b<|3.00|>"]) == pytest.approx(100)


def test_alignment_skips_a_cut_off_hypothesis_and_names_a_bad_reference():
    cut_off = "<|sil|><|0.52|>the<|0.78|>big"
    assert alignment_error_ms([AAS_REFERENCE], [cut_off]) is None
    assert alignment_error_ms([AAS_REFERENCE] * 2, [cut_off, AAS_HYPOTHESIS]) == pytest.approx(
        440 / 3
    )
    with pytest.raises(ValueError, match=r"references\[0\]"):
        alignment_error_ms(["the<|0.80|>"], [AAS_HYPOTHESIS])


def test_release_alignment_drops_the_first_generated_unit_and_times_silence():
    reference = "<|0.00|><|sil|><|0.50|>the<|0.80|>cat<|1.10|><|sil|><|1.60|>sat<|1.90|>"
    hypothesis = "<|sil|><|0.40|>the<|0.80|>cat<|1.00|><|sil|><|1.50|>sat<|1.90|>"
    # release: the leading <|sil|> of the generation is lost, so the reference's is deleted; the,
    # cat, <|sil|>, sat shift by 0.1, 0.1, 0.2, 0.1 s: 0.5 / 4 = 125 ms. Ours times the three words:
    # 0.3 / 3 = 100 ms
    assert release_alignment_error_ms([reference], [hypothesis]) == pytest.approx(125)
    assert alignment_error_ms([reference], [hypothesis]) == pytest.approx(100)
    # tags before the first timestamp are dropped; a text without timestamps is skipped with its
    # partner, and a cut-off generation loses its last unit (the first pair alone scores 125 ms)
    tagged = "<|startoftranscript|><|zh|><|transcribe|><|zh|><|timestamps|>" + reference
    hypotheses = [hypothesis, "the cat", "<|sil|><|0.40|>the"]
    assert release_alignment_error_ms([tagged, reference, reference], hypotheses) == pytest.approx(
        125
    )


# --- majority baseline ------------------------------------------------------------------------


def test_majority_baseline_is_the_training_splits_most_common_answer():
    train = ["rain", "wind", "rain", "birds", "wind", "rain"]  # rain 3, wind 2, birds 1
    test = ["wind", "wind", "wind", "rain", "birds"]  # the test split's own majority: "wind", 3/5
    assert majority_answer(train) == "rain"
    assert majority_accuracy(train, test) == pytest.approx(1 / 5)
    assert majority_answer(["b", "a", "a", "b"]) == "b"  # a tie goes to the answer seen first
    assert majority_answer([]) is None and majority_accuracy([], test) == 0.0
    with pytest.raises(ValueError, match="at least one reference"):
        majority_accuracy(train, [])


# --- captioning
# --------------------------------------------------------------------------------------------------

CAPTION_REFERENCES = [["a dog barks loudly"], ["rain falls on the roof"]]
CAPTION_HYPOTHESES = ["A dog barks loudly.", "rain falls on the roof now"]


@needs_java
def test_cider_d_hand_worked():
    scores = caption_scores(CAPTION_REFERENCES, CAPTION_HYPOTHESES)
    # The clips share no n-gram, so every weight is log 2 and cancels. Clip 1 equals its reference
    # after PTB tokenisation (lower case, no "."): cosine 1 for n = 1..4, no length penalty, x10 ->
    # 10. Clip 2 adds "now": n-gram cosine sqrt(k_ref / k_hyp) = sqrt(5/6), sqrt(4/5), sqrt(3/4),
    # sqrt(2/3), length penalty exp(-1/72).
    second = 10 * math.exp(-1 / 72) * sum(math.sqrt(k / (k + 1)) for k in (5, 4, 3, 2)) / 4
    assert scores["CIDEr-D"] == pytest.approx((10 + second) / 2)


@needs_java
def test_cider_d_hand_worked_with_weights_and_several_references():
    references = [["a dog barks", "a dog runs"], ["a cat sleeps"]]
    hypotheses = ["a dog barks", "a cat sleeps"]
    # Two clips: an n-gram in both clips' references weighs log(2 / 2) = 0 ("a"), one in one
    # clip's log(2 / 1). Every caption has 3 words, so no length penalty, and no 4-gram (a zero
    # term). Clip 1, n = 1..3: cosine 1 against "a dog barks"; against "a dog runs" 1/2 ("dog" of
    # "dog", "barks"), 1/2 ("a dog" of two bigrams), 0 -> (0.75 + 0.75 + 0.5 + 0) / 4 x 10 = 5.
    # Clip 2 equals its reference: (1 + 1 + 1 + 0) / 4 x 10 = 7.5.
    assert caption_scores(references, hypotheses)["CIDEr-D"] == pytest.approx((5 + 7.5) / 2)


@needs_java
def test_spice_without_corenlp_reports_why():
    reason = spice_unavailable_reason()
    if reason is None:
        pytest.skip("Stanford CoreNLP is installed: SPICE runs")
    scores = caption_scores(CAPTION_REFERENCES, CAPTION_HYPOTHESES)
    assert scores["SPICE"] is None and scores["SPIDEr"] is None
    assert "stanford-corenlp-3.6.0" in scores["unavailable"]


def test_caption_references_must_be_lists():
    with pytest.raises(ValueError, match=r"references\[1\]"):
        caption_scores([["a dog"], "a cat"], ["a dog", "a cat"])
