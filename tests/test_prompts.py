"""Task tags, SRWT timestamps and ChatML, tested against the release's prompts.

They are also tested against hand-worked ids and the spec's numbers.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qwen_audio.prompts import (
    DEFAULT_SYSTEM,
    IGNORE_INDEX,
    MIN_SILENCE,
    TASKS,
    Message,
    TimedWord,
    encode_chat,
    encode_task,
    encode_text,
    format_timestamped_words,
    from_list_format,
    parse_timestamped_words,
    task_prompt,
)
from qwen_audio.tokenizer import SPECIAL_TOKENS, TASK_TOKENS, QwenAudioTokenizer

ONE_SECOND = {"x.flac": torch.zeros(16000), "y.flac": torch.zeros(8000)}  # 25 and 12 audio tokens


def expanded(tokenizer: QwenAudioTokenizer, audio_tokens: int) -> list[int]:
    return [tokenizer.audio_start, *[tokenizer.audio_pad] * audio_tokens, tokenizer.audio_end]


# The prompts of the release's evaluation scripts (spec §5 table), written out by hand.
OFFICIAL_PROMPTS = [
    (
        "asr",
        dict(audio_language="en"),
        "<|startoftranscript|><|en|><|transcribe|><|en|><|notimestamps|><|wo_itn|>",
    ),
    (
        "asr",
        dict(audio_language="zh"),
        "<|startoftranscript|><|zh|><|transcribe|><|zh|><|notimestamps|><|wo_itn|>",
    ),
    (
        "s2tt",
        dict(audio_language="en", text_language="de"),
        "<|startoftranscript|><|en|><|translate|><|de|><|notimestamps|><|itn|>",
    ),
    (
        "srwt",
        dict(audio_language="zh"),
        "<|startoftranscript|><|zh|><|transcribe|><|zh|><|timestamps|><|0.00|>",
    ),
    (
        "aac",
        dict(),
        "<|startofanalysis|><|unknown|><|caption|><|en|><|notimestamps|><|caption_clotho|>",
    ),
    (
        "aac",
        dict(instruction="<|caption_audiocaps|>"),
        "<|startofanalysis|><|unknown|><|caption|><|en|><|notimestamps|><|caption_audiocaps|>",
    ),
    ("asc", dict(), "<|startofanalysis|><|unknown|><|keyword|><|en|><|notimestamps|><|scene|>"),
    (
        "er",
        dict(audio_language="en"),
        "<|startofanalysis|><|en|><|keyword|><|en|><|notimestamps|><|emotion_recognition|>",
    ),
    (
        "aqa",
        dict(question="Is it raining?"),
        "<|startofanalysis|><|en|><|question|>Is it raining?<|answer|>",
    ),
    (
        "vsc",
        dict(),
        "<|startofanalysis|><|en|><|keyword|><|en|><|notimestamps|><|vocal_classification|>",
    ),
    (
        "mna",
        dict(),
        "<|startofanalysis|><|unknown|><|keyword|><|en|><|notimestamps|><|note_analysis|>",
    ),
]


@pytest.mark.parametrize(("task", "tags", "expected"), OFFICIAL_PROMPTS)
def test_official_evaluation_prompts_token_for_token(released, task, tags, expected):
    assert task_prompt(task, **tags) == expected
    # The release tokenises the whole prompt string with every special token allowed.
    reference = encode_text(released, "<audio>x.flac</audio>" + expected, load=ONE_SECOND)
    example = encode_task(released, task, "x.flac", load=ONE_SECOND, **tags)
    assert example.ids == reference.ids
    assert example.labels == [IGNORE_INDEX] * len(example.ids)
    assert example.clips == reference.clips


def test_spec_example_ids_after_expansion(released):
    example = encode_task(released, "asr", "x.flac", audio_language="en", load=ONE_SECOND)
    # spec §4: [155163, 87, 8103, 580, 155164, ...] with the path tokens replaced by 25
    # placeholders.
    assert example.ids == [
        155163,
        *[151851] * 25,
        155164,
        151852,
        151859,
        151855,
        151859,
        151868,
        154877,
    ]
    assert (example.clips[0].start, example.clips[0].stop) == (0, 27)


TABLE_1 = {
    "asr",
    "s2tt",
    "osr",
    "dialect_asr",
    "srwt",
    "did",
    "lid",
    "sgc",
    "er",
    "sv",
    "sd",
    "ser",
    "ks",
    "ic",
    "sf",
    "sap",
    "vsc",
    "aac",
    "sec",
    "asc",
    "sed",
    "aqa",
    "sid",
    "smer",
    "mc",
    "mic",
    "mna",
    "mgr",
    "mr",
    "mqa",
}
TASK_TAGS = {"<|transcribe|>", "<|translate|>", "<|caption|>", "<|keyword|>", "<|question|>"}


def canonical_tags(task: str) -> dict[str, str]:
    """Arguments that make every task's prompt complete.

    They are Mandarin speech, English translation and a question.
    """
    spec = TASKS[task]
    tags = {}
    if spec.audio_language is None:
        tags["audio_language"] = "zh"
    if spec.tag == "<|translate|>":
        tags["text_language"] = "en"
    if spec.tag == "<|question|>" and spec.question is None:
        tags["question"] = "What is it?"
    return tags


def test_registry_covers_table_1():
    assert set(TASKS) == TABLE_1


@pytest.mark.parametrize("task", sorted(TABLE_1))
def test_every_task_builds_in_the_paper_order(demo, task):
    spec = TASKS[task]
    assert spec.title and spec.output and spec.source
    assert spec.source.startswith("eval_audio/") or spec.source.startswith("ours:")
    tags = canonical_tags(task)
    prompt = task_prompt(task, **tags)
    answer = (
        "yes<|0.50|>" if task == "srwt" else "yes"
    )  # SRWT targets start with the prompt's <|0.00|>
    target_text = ("<|0.00|>" if task == "srwt" else "") + answer
    example = encode_task(demo, task, "x.flac", target_text, load=ONE_SECOND, **tags)
    head = [demo.decode([token_id]) for token_id in example.ids[27:33]]
    assert head[0] == (
        "<|startoftranscript|>"
        if task in {"asr", "s2tt", "osr", "dialect_asr", "srwt", "ser", "ks"}
        else "<|startofanalysis|>"
    )
    assert head[1] in {"<|unknown|>", "<|en|>", "<|zh|>"}
    assert head[2] == spec.tag and spec.tag in TASK_TAGS
    if spec.tag == "<|question|>":
        assert prompt.endswith("<|answer|>") and (spec.question or tags["question"]) in prompt
    else:
        assert head[3] in {"<|en|>", "<|zh|>"}
        assert head[4] == ("<|timestamps|>" if spec.timestamps else "<|notimestamps|>")
        assert head[5] == spec.instructions[0] and all(
            i in SPECIAL_TOKENS for i in spec.instructions
        )
    assert demo.decode(example.ids[27:]) == prompt + answer + "<|endoftext|>"
    target = demo.encode(answer, TASK_TOKENS) + [demo.eod]
    assert example.labels == [IGNORE_INDEX] * (len(example.ids) - len(target)) + target


def test_tasks_with_different_outputs_never_share_a_prompt():
    prompts = {}
    for task in sorted(TABLE_1):
        prompts.setdefault(task_prompt(task, **canonical_tags(task)), []).append(task)
    shared = sorted(tasks for tasks in prompts.values() if len(tasks) > 1)
    # Same output format by design: dialect ASR is Mandarin ASR; music QA is audio QA.
    assert shared == [["aqa", "mqa"], ["asr", "dialect_asr"]]


def test_pretraining_example_hand_worked(demo):
    example = encode_task(
        demo, "asr", "x.flac", "the cat sleeps.", audio_language="en", load=ONE_SECOND
    )
    tags = [4096 + offset for offset in (209, 216, 212, 216, 225)] + [demo.special_id("<|wo_itn|>")]
    target = demo.encode("the cat sleeps.") + [4096]
    assert example.ids == expanded(demo, 25) + tags + target
    assert example.labels == [IGNORE_INDEX] * (27 + 6) + target
    assert example.loss_mask == [False] * 33 + [True] * len(target)


def test_two_audio_task(released, tmp_path):
    paths = []
    for name, samples in (("a.wav", 16000), ("b.wav", 8000)):
        soundfile.write(tmp_path / name, np.zeros(samples, dtype=np.float32), 16000)
        paths.append(str(tmp_path / name))
    example = encode_task(released, "sv", paths, "yes", audio_language="en")
    assert [(span.start, span.stop, span.num_samples) for span in example.clips] == [
        (0, 27, 16000),
        (27, 41, 8000),
    ]
    assert example.ids[:41] == expanded(released, 25) + expanded(released, 12)
    assert released.decode(example.ids, [str(p) for p in paths]).startswith(
        f"<audio>{paths[0]}</audio><audio>"
    )


def test_target_special_tokens_are_task_tokens_only(released):
    example = encode_task(
        released, "mna", "x.flac", "<|pitch|><|midi_pitch_60|><audio>", load=ONE_SECOND
    )
    target = example.ids[27 + 6 :]
    assert target[:2] == [154890, 154891 + 60]
    assert released.audio_start not in target
    assert released.decode(target) == "<|pitch|><|midi_pitch_60|><audio><|endoftext|>"
    assert "<|endoftext|>" not in TASK_TOKENS


@pytest.mark.parametrize(
    ("task", "tags", "message"),
    [
        ("nope", {}, "unknown task 'nope'"),
        ("asr", {}, "task 'asr' needs audio_language"),
        ("asr", {"audio_language": "xx"}, "audio_language 'xx' is not one of"),
        ("asr", {"audio_language": "unknown"}, "text_language 'unknown' is not one of"),
        ("s2tt", {"audio_language": "en"}, "needs text_language"),
        ("s2tt", {"audio_language": "en", "text_language": "klingon"}, "text_language 'klingon'"),
        (
            "asr",
            {"audio_language": "en", "instruction": "<|scene|>"},
            "instruction '<|scene|>' is not one of",
        ),
        ("aqa", {}, "needs question"),
        ("aqa", {"question": "q", "instruction": "<|itn|>"}, "takes no instruction"),
        ("asc", {"question": "q"}, "takes no question"),
    ],
)
def test_bad_task_arguments_raise(task, tags, message):
    with pytest.raises(ValueError, match=message.replace("|", r"\|")):
        task_prompt(task, **tags)


def test_text_longer_than_max_length_raises(demo):
    with pytest.raises(
        ValueError, match=r"target: the example is \d+ tokens long, more than max_length 40"
    ):
        encode_task(demo, "asc", "x.flac", "word " * 20, load=ONE_SECOND, max_length=40)


# --- SRWT
# --------------------------------------------------------------------------------------------------

SPEC_SRWT = "<|0.00|><|sil|><|0.54|>面<|0.86|>条<|1.17|>机<|1.46|><|sil|><|2.01|>"  # eval_audio/EVALUATION.md
SPEC_WORDS = [TimedWord("面", 0.54, 0.86), TimedWord("条", 0.86, 1.17), TimedWord("机", 1.17, 1.46)]


def test_srwt_release_example(released):
    assert format_timestamped_words(SPEC_WORDS, duration=2.01) == SPEC_SRWT
    assert parse_timestamped_words(SPEC_SRWT) == SPEC_WORDS
    ids = released.encode(SPEC_SRWT, TASK_TOKENS)
    assert ids[:3] == [151871, 151869, 151871 + 54] and ids[-2:] == [151869, 151871 + 201]
    assert (
        len([i for i in ids if released.timestamp_seconds(i) is not None]) == 3 + 2 + 1
    )  # units + 1


def test_srwt_small_gaps_join_the_next_word_and_long_ends_clip():
    words = [TimedWord("a", 0.1, 0.5), TimedWord("b", 0.6, 1.0), TimedWord("c", 29.5, 31.0)]
    assert format_timestamped_words(words) == "<|0.00|>a<|0.50|>b<|1.00|><|sil|><|29.50|>c<|30.00|>"
    assert format_timestamped_words([TimedWord("a", 0.004, 0.996)]) == "<|0.00|>a<|1.00|>"


def test_srwt_training_example_shares_the_first_timestamp(released):
    target = format_timestamped_words(SPEC_WORDS, duration=2.01)
    example = encode_task(released, "srwt", "x.flac", target, audio_language="zh", load=ONE_SECOND)
    prompt_length = 27 + 6
    assert (
        example.ids[prompt_length - 1] == 151871 and example.ids[prompt_length] == 151869
    )  # <|0.00|>, <|sil|>
    assert (
        example.labels[prompt_length - 1] == IGNORE_INDEX
        and example.labels[prompt_length] == 151869
    )
    assert released.decode(example.ids[prompt_length - 1 : -1]) == target
    with pytest.raises(ValueError, match=r"must start with <\|0\.00\|>"):
        encode_task(released, "srwt", "x.flac", "面", audio_language="zh", load=ONE_SECOND)


grid_words = st.lists(
    st.tuples(
        st.sampled_from(["面", "条", "hello", "a"]),
        st.booleans(),
        st.integers(21, 200),
        st.integers(0, 80),
    ),
    max_size=12,
)


@settings(max_examples=80, deadline=None)
@given(grid_words, st.booleans())
def test_srwt_round_trip_on_the_grid(demo, units, gap_first):
    """Words on the 0.01 s grid come back from text and tokens.

    Their gaps are either 0 or longer than MIN_SILENCE.
    """
    words, time = [], 0
    for text, gap, silence, length in units:
        start = time + (silence if gap or (not words and gap_first) else 0)
        if start + length > 3000:
            break
        words.append(TimedWord(text, start / 100, (start + length) / 100))
        time = start + length
    text = format_timestamped_words(words)
    assert parse_timestamped_words(text) == words
    assert parse_timestamped_words(demo.decode(demo.encode(text, TASK_TOKENS))) == words


@settings(max_examples=80, deadline=None)
@given(st.lists(st.floats(0, 35, allow_nan=False), min_size=2, max_size=16, unique=True))
def test_srwt_any_times_stay_close(times):
    times = sorted(times)
    words = [
        TimedWord(f"w{i}", start, end)
        for i, (start, end) in enumerate(zip(times[::2], times[1::2]))
    ]
    words = [word for word in words if round(word.start * 100) < 3000]
    parsed = parse_timestamped_words(format_timestamped_words(words))
    assert [word.text for word in parsed] == [word.text for word in words]
    for original, got in zip(words, parsed, strict=True):
        assert original.start - MIN_SILENCE - 0.0051 <= got.start <= original.start + 0.0051
        assert abs(got.end - min(original.end, 30.0)) <= 0.0051


@pytest.mark.parametrize(
    ("words", "message"),
    [
        ([TimedWord("a", 1.0, 0.5)], r"words\[0\]\.end 0\.5 is before its start"),
        (
            [TimedWord("a", 0.0, 1.0), TimedWord("b", 0.5, 2.0)],
            r"words\[1\]\.start 0\.5 is before words\[0\]\.end",
        ),
        ([TimedWord("a", -0.5, 1.0)], r"words\[0\] times .* must be finite and >= 0"),
        ([TimedWord("a", float("nan"), 1.0)], r"words\[0\] times"),
        ([TimedWord("a", 30.2, 31.0)], r"words\[0\]\.start 30\.2 s lies beyond the 30 s"),
        ([TimedWord("<|sil|>", 0.0, 1.0)], r"words\[0\]\.text"),
        ([TimedWord("", 0.0, 1.0)], r"words\[0\]\.text"),
    ],
)
def test_srwt_bad_words_raise(words, message):
    with pytest.raises(ValueError, match=message):
        format_timestamped_words(words)


def test_srwt_duration_before_last_word_raises():
    with pytest.raises(ValueError, match="duration 0.5 s ends before the last word"):
        format_timestamped_words([TimedWord("a", 0.0, 1.0)], duration=0.5)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("面<|0.54|>", "must start and end with a timestamp"),
        ("<|0.00|>面", "must start and end with a timestamp"),
        ("<|0.00|><|0.54|>面<|0.86|>", "two timestamps in a row"),
        ("<|0.00|>面<|0.86|>条<|0.54|>", r"<\|0\.54\|> \(number 2\) is beyond 30 s or before"),
        ("<|0.00|>面<|30.01|>", "beyond 30 s"),
    ],
)
def test_srwt_bad_text_raises(text, message):
    with pytest.raises(ValueError, match=message):
        parse_timestamped_words(text)


# --- ChatML
# --------------------------------------------------------------------------------------------------


def test_chatml_hand_worked_ids_and_labels(released):
    example = encode_chat(released, [Message("user", "hi"), Message("assistant", "Hello there.")])
    system, hi, hello = (
        released.encode(DEFAULT_SYSTEM),
        released.encode("hi"),
        released.encode("Hello there."),
    )
    assert example.ids == [
        151644,
        8948,
        198,
        *system,
        151645,
        198,
        151644,
        872,
        198,
        *hi,
        151645,
        198,
        151644,
        77091,
        198,
        *hello,
        151645,
    ]
    assert example.labels == [IGNORE_INDEX] * (len(example.ids) - len(hello) - 1) + hello + [151645]
    raw = (
        f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\nHello there.<|im_end|>"
    )
    assert released.decode(example.ids) == raw
    assert example.ids == released.encode(raw, allowed_special="all")


def test_chatml_multi_turn_multi_audio(released):
    content = [{"audio": "x.flac"}, {"audio": "y.flac"}, {"text": "what differs?"}]
    assert (
        from_list_format(content)
        == "Audio 1:<audio>x.flac</audio>\nAudio 2:<audio>y.flac</audio>\nwhat differs?"
    )
    messages = [
        Message("system", "Be brief."),
        Message("user", content),
        Message("assistant", "The second is <|0.50|> s long."),
        Message("user", [{"audio": "x.flac"}, {"text": "again?"}]),
    ]
    example = encode_chat(released, messages, add_generation_prompt=True, load=ONE_SECOND)
    assert [span.source for span in example.clips] == ["x.flac", "y.flac", "x.flac"]
    assert [span.audio_tokens for span in example.clips] == [25, 12, 25]
    for span in example.clips:
        assert example.ids[span.start : span.stop] == expanded(released, span.audio_tokens)
    assert example.waveforms[0] is example.waveforms[2]
    assert example.ids[-4:] == [198, 151644, 77091, 198]
    answer = released.encode("The second is <|0.50|> s long.", TASK_TOKENS) + [151645]
    assert 151871 + 50 in answer
    pairs = zip(example.ids, example.labels, strict=True)
    assert [t for t, label in pairs if label != IGNORE_INDEX] == answer
    text = released.decode(example.ids, [span.source for span in example.clips])
    assert text.startswith(
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nAudio 1:<audio>x.flac</audio>\n"
    )
    assert text.endswith(
        "<|im_start|>user\nAudio 1:<audio>x.flac</audio>\nagain?<|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.mark.parametrize(
    ("messages", "kwargs", "message"),
    [
        ([Message("assistant", "hi")], {}, r"messages\[0\]\.role is 'assistant'; expected 'user'"),
        (
            [Message("system", "s"), Message("user", "a"), Message("user", "b")],
            {},
            r"messages\[2\]\.role is 'user'",
        ),
        (
            [Message("user", "a"), Message("assistant", "<audio>x.flac</audio>")],
            {},
            r"messages\[1\]\.content",
        ),
        (
            [Message("user", "a"), Message("assistant", "b")],
            {"add_generation_prompt": True},
            "last message",
        ),
        (
            [Message("user", [{"image": "x.png"}])],
            {},
            r"items\[0\] must have an 'audio' or a 'text' key",
        ),
    ],
)
def test_chatml_bad_conversations_raise(released, messages, kwargs, message):
    with pytest.raises(ValueError, match=message):
        encode_chat(released, messages, load=ONE_SECOND, **kwargs)


def test_chatml_max_length(demo):
    with pytest.raises(ValueError, match="messages: the example is"):
        encode_chat(demo, [Message("user", "hello " * 50)], max_length=30)
