"""Generation on a tiny random model.

Covered: batch == alone, KV cache == recompute, stops, sampling, CLI, long form.
"""

from __future__ import annotations

import copy
import json
import math
import re
import warnings
from dataclasses import replace

import numpy as np
import pytest
import soundfile
import torch
from torch.testing import assert_close

from qwen_audio import generate as generation
from qwen_audio import longform
from qwen_audio.batching import encode_prompts
from qwen_audio.checkpoint import load_model, save_pretrained
from qwen_audio.config import QwenAudioConfig
from qwen_audio.generate import GenerationConfig, generate, stream_text
from qwen_audio.generate.__main__ import main
from qwen_audio.generate.sampling import SlotSampler
from qwen_audio.longform import transcribe_long, window_bounds
from qwen_audio.model import QwenAudio
from qwen_audio.prompts import TimedWord
from qwen_audio.tokenizer import DEMO_RANKS_FILE, TASK_TOKENS

ASR = "<|startoftranscript|><|en|><|transcribe|><|en|><|notimestamps|><|wo_itn|>"
SR = 16000


def write_wav(
    path, seconds: float, seed: int, silences: tuple[tuple[float, float], ...] = ()
) -> str:
    """Noise plus a tone; ``silences`` are (start, end) seconds set to exact zeros."""
    rng = np.random.default_rng(seed)
    n = round(seconds * SR)
    audio = 0.1 * rng.standard_normal(n) + 0.2 * np.sin(
        2 * np.pi * (200 + 50 * seed) * np.arange(n) / SR
    )
    for start, end in silences:
        audio[round(start * SR) : round(end * SR)] = 0.0
    soundfile.write(path, audio.astype(np.float32), SR)
    return str(path)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("clips")
    return {
        name: write_wav(folder / f"{name}.wav", seconds, seed)
        for seed, (name, seconds) in enumerate({"a": 1.0, "b": 0.7, "c": 2.3}.items())
    }


@pytest.fixture(scope="module")
def model64() -> QwenAudio:
    """float64, so that batch and single runs cannot flip a near-tie argmax by rounding."""
    torch.manual_seed(0)
    return QwenAudio(QwenAudioConfig.from_name("tiny", attention_backend="sdpa")).double().eval()


def prompts(clips: dict[str, str]) -> list[str]:
    return [
        f"<audio>{clips['a']}</audio>{ASR}",
        f"Audio 1:<audio>{clips['b']}</audio>\nAudio 2:<audio>{clips['c']}</audio>\nWhich one is louder?",
        "A prompt without any audio, and longer than the first.",
    ]


def run(model, tokenizer, texts, config, **kwargs) -> list[list[int]]:
    batch = encode_prompts(tokenizer, texts, 8192)
    return generate(
        model,
        batch.input_ids,
        batch.attention_mask,
        config,
        vocab_size=tokenizer.n_vocab,
        audio_mel=batch.audio_mel,
        audio_mel_lengths=batch.audio_mel_lengths,
        **kwargs,
    )


def full_logits(model, tokenizer, prompt: str, generated: list[int]) -> torch.Tensor:
    """Next-token logits after ``prompt + generated``, from one forward over the whole sequence.

    No cache is used.
    """
    batch = encode_prompts(tokenizer, [prompt], 8192)
    ids = torch.cat([batch.input_ids, torch.tensor([generated], dtype=torch.long)], dim=1)
    with torch.no_grad():
        out = model(ids, audio_mel=batch.audio_mel, audio_mel_lengths=batch.audio_mel_lengths)
    return out.logits[0, -1, : tokenizer.n_vocab]


GREEDY = GenerationConfig(max_new_tokens=6)


@pytest.fixture(scope="module")
def alone(model64, demo, clips) -> list[list[int]]:
    """Greedy tokens of each prompt decoded on its own."""
    return [run(model64, demo, [text], GREEDY)[0] for text in prompts(clips)]


def test_batch_gives_the_tokens_of_each_prompt_alone(model64, demo, clips, alone):
    texts = prompts(clips)
    batch = encode_prompts(demo, texts, 8192)
    assert len(set(batch.attention_mask.sum(-1).tolist())) == 3  # three lengths: real left padding
    assert batch.audio_mel.shape[0] == 3
    assert run(model64, demo, texts, GREEDY) == alone
    assert all(len(out) == 6 for out in alone)


def test_kv_cache_decoding_equals_recomputing_the_full_sequence(model64, demo, clips, alone):
    prompt, generated = prompts(clips)[1], alone[1]  # two audios
    for step, token in enumerate(generated):
        assert int(full_logits(model64, demo, prompt, generated[:step]).argmax()) == token


def _first_new_token_index(tokens: list[int]) -> int:
    """Index of the first token (after index 1) not seen before it.

    That token serves as a stop id that ends generation there.
    """
    return next(i for i in range(2, len(tokens)) if tokens[i] not in tokens[:i])


def test_stop_ids_end_generation_and_are_not_returned(model64, demo, clips, alone):
    free = alone[0]
    stop_at = _first_new_token_index(free)
    steps = []
    (stopped,) = run(
        model64,
        demo,
        prompts(clips)[:1],
        replace(GREEDY, stop_ids=(free[stop_at],)),
        streamer=steps.append,
    )
    assert stopped == free[:stop_at]
    assert steps == [[t] for t in free[:stop_at]] + [[None]]


def test_a_stopped_row_waits_while_the_other_rows_go_on(model64, demo, clips, alone):
    stop_at = _first_new_token_index(alone[0])
    stop = alone[0][stop_at]
    assert stop not in alone[1]  # so the second row runs its full course
    out = run(model64, demo, prompts(clips)[:2], replace(GREEDY, stop_ids=(stop,)))
    assert out == [alone[0][:stop_at], alone[1]]


def test_min_new_tokens_suppresses_the_stop_until_reached(model64, demo, clips, alone):
    prompt, free = prompts(clips)[0], alone[0]
    stop_at = _first_new_token_index(free)
    stop = free[stop_at]
    (out,) = run(
        model64, demo, [prompt], replace(GREEDY, min_new_tokens=stop_at + 2, stop_ids=(stop,))
    )
    assert len(out) >= stop_at + 2 and stop not in out[: stop_at + 2]
    assert out[:stop_at] == free[:stop_at]
    logits = full_logits(model64, demo, prompt, out[:stop_at])
    logits[stop] = -math.inf  # at the step where the stop was the argmax, the runner-up follows
    assert out[stop_at] == int(logits.argmax())


def test_seeded_sampling_is_reproducible_and_seeds_differ(model64, demo, clips):
    texts = prompts(clips)[1:]
    sample = replace(GREEDY, do_sample=True, temperature=1.5, seed=1)
    first = run(model64, demo, texts, sample)
    assert run(model64, demo, texts, sample) == first
    assert run(model64, demo, texts, replace(sample, seed=2)) != first


@pytest.mark.parametrize("narrow", [{"top_k": 1}, {"top_p": 1e-9}])
def test_sampling_from_only_the_best_token_is_greedy(model64, demo, clips, alone, narrow):
    assert (
        run(model64, demo, prompts(clips), replace(GREEDY, do_sample=True, seed=3, **narrow))
        == alone
    )


def test_repetition_penalty_matches_a_hand_applied_penalty_on_full_logits(model64, demo, clips):
    texts, penalty = [prompts(clips)[0], prompts(clips)[2]], 1.3
    outputs = run(
        model64, demo, texts, GenerationConfig(max_new_tokens=4, repetition_penalty=penalty)
    )
    assert all(outputs), outputs  # every prompt generated tokens: the loop below checks something
    for text, out in zip(texts, outputs, strict=True):
        prompt_ids = encode_prompts(demo, [text], 8192).input_ids[0].tolist()
        for step, token in enumerate(out):
            logits = full_logits(model64, demo, text, out[:step])
            seen = torch.zeros_like(logits, dtype=torch.bool)
            seen[prompt_ids + out[:step]] = True
            penalised = torch.where(
                seen, torch.where(logits < 0, logits * penalty, logits / penalty), logits
            )
            assert int(penalised.argmax()) == token


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batch_equals_cpu_alone_and_seeded_sampling_repeats(model64, demo, clips, alone):
    model = copy.deepcopy(model64).cuda()
    texts = prompts(clips)

    def run_cuda(config: GenerationConfig) -> list[list[int]]:
        batch = encode_prompts(demo, texts, 8192).to("cuda")
        return generate(
            model,
            batch.input_ids,
            batch.attention_mask,
            config,
            vocab_size=demo.n_vocab,
            audio_mel=batch.audio_mel,
            audio_mel_lengths=batch.audio_mel_lengths,
        )

    assert run_cuda(GREEDY) == alone
    sample = replace(GREEDY, do_sample=True, seed=5)
    assert run_cuda(sample) == run_cuda(sample)


def _apply(
    config: GenerationConfig, history: list[int], scores: list[float], prompt_length: int = 0
) -> torch.Tensor:
    """The device sampler's scores for one slot.

    The slot's first ``prompt_length`` ``history`` ids are its prompt.
    """
    sampler = SlotSampler(1, len(scores), torch.device("cpu"))
    sampler.set(0, config, torch.tensor(history))  # every id so far counts as seen
    sampler.made[0] = len(history) - prompt_length
    out = sampler.scores(torch.tensor([scores]), [0], slice(0, 1))
    return (sampler.warp(out, slice(0, 1)) if config.do_sample else out)[0]


def _transformers_scores(
    config: GenerationConfig, history: torch.Tensor, scores: torch.Tensor, prompt_length: int
) -> torch.Tensor:
    """The same transforms by transformers' logits processors.

    They run in the order its ``generate`` applies them.
    """
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        MinNewTokensLengthLogitsProcessor,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    processors = LogitsProcessorList()
    if config.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(config.repetition_penalty))
    if config.min_new_tokens:
        processors.append(
            MinNewTokensLengthLogitsProcessor(
                prompt_length, config.min_new_tokens, list(config.stop_ids)
            )
        )
    if config.do_sample:
        processors += [TemperatureLogitsWarper(config.temperature)]
        if config.top_k:
            processors.append(TopKLogitsWarper(config.top_k))
        if config.top_p < 1:
            processors.append(TopPLogitsWarper(config.top_p))
    return processors(history, scores)


@pytest.mark.parametrize(
    "config",
    [
        GenerationConfig(repetition_penalty=1.3, min_new_tokens=3, stop_ids=(5, 9)),
        GenerationConfig(
            do_sample=True, temperature=0.7, top_k=20, top_p=0.8, repetition_penalty=1.1
        ),
        GenerationConfig(do_sample=True, top_p=0.5, min_new_tokens=1, stop_ids=(3,)),
        GenerationConfig(do_sample=True, top_k=1),
    ],
)
def test_device_sampler_equals_transformers_logits_processors(config):
    generator = torch.Generator().manual_seed(0)
    for made in (0, 2, 5):
        history = torch.randint(0, 64, (1, 7 + made), generator=generator)
        scores = torch.randn(1, 64, generator=generator) * 3
        expected = _transformers_scores(config, history, scores.clone(), prompt_length=7)
        assert torch.equal(
            _apply(config, history[0].tolist(), scores[0].tolist(), prompt_length=7), expected[0]
        )


def test_temperature_divides_the_logits():
    out = _apply(GenerationConfig(do_sample=True, temperature=2.0), [0], [2.0, 0.0, -4.0])
    assert_close(out, torch.tensor([1.0, 0.0, -2.0]))


def test_top_k_keeps_the_k_best():
    out = _apply(GenerationConfig(do_sample=True, top_k=2), [0], [0.5, 3.0, -1.0, 2.0])
    assert out.tolist() == [-math.inf, 3.0, -math.inf, 2.0]


@pytest.mark.parametrize(("top_p", "kept"), [(0.7, 2), (0.85, 3), (1e-9, 1)])
def test_top_p_keeps_the_smallest_set_reaching_p(top_p, kept):
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])  # cumulative 0.5, 0.8, 0.95, 1.0
    out = _apply(GenerationConfig(do_sample=True, top_p=top_p), [0], probs.log().tolist())
    assert torch.isfinite(out).tolist() == [True] * kept + [False] * (4 - kept)
    assert_close(out.softmax(-1)[:kept], probs[:kept] / probs[:kept].sum())


def test_repetition_penalty_divides_positive_and_multiplies_negative_seen_logits():
    # history: tokens 1 and 2 seen; 4 = vocab size marks left padding and must not count
    out = _apply(GenerationConfig(repetition_penalty=2.0), [4, 1, 2], [1.0, 2.0, -1.0, 3.0])
    assert out.tolist() == [1.0, 1.0, -2.0, 3.0]


def test_min_new_tokens_masks_stops_only_before_the_minimum():
    config = GenerationConfig(min_new_tokens=1, stop_ids=(2,))
    assert _apply(config, [5, 6, 7], [1.0, 1.0, 1.0], prompt_length=3).tolist() == [
        1.0,
        1.0,
        -math.inf,
    ]
    assert _apply(config, [5, 6, 7, 0], [1.0, 1.0, 1.0], prompt_length=3).tolist() == [
        1.0,
        1.0,
        1.0,
    ]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_new_tokens", 0),
        ("min_new_tokens", 600),
        ("temperature", 0.0),
        ("top_k", -1),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("repetition_penalty", 0.0),
        ("stop_ids", (-1,)),
        ("seed", -3),
    ],
)
def test_bad_config_values_name_their_field(field, value):
    with pytest.raises(ValueError, match=field):
        GenerationConfig(**{field: value})


def test_release_settings(released):
    base, chat = GenerationConfig.base(released), GenerationConfig.chat(released)
    assert (base.stop_ids, base.top_p, base.top_k, base.do_sample) == ((151643,), 0.8, 0, True)
    assert base.max_new_tokens == chat.max_new_tokens == 512
    assert (set(chat.stop_ids), chat.top_p) == ({151645, 151644, 151643}, 0.5)


def test_stream_text_holds_back_split_characters(model64, demo, monkeypatch):
    h, c3, a9, x = (demo.encoding.encode_single_token(b) for b in (b"h", b"\xc3", b"\xa9", b"x"))
    assert demo.decode([c3, a9]) == "\u00e9"
    monkeypatch.setattr(
        generation, "generate_steps", lambda *a, **k: iter([[h], [c3], [a9], [x], [None]])
    )
    assert list(stream_text(model64, demo, "hi", GREEDY)) == ["h", "\u00e9", "x"]


def test_stream_text_joins_to_the_decoded_generation(model64, demo, clips, alone):
    pieces = list(stream_text(model64, demo, prompts(clips)[1], GREEDY))
    assert "".join(pieces) == demo.decode(alone[1])


# ---- errors
# -------------------------------------------------------------------------------------------------


def test_missing_audio_names_the_path(demo, tmp_path):
    missing = str(tmp_path / "nowhere.wav")
    with pytest.raises(FileNotFoundError, match="nowhere.wav"):
        encode_prompts(demo, [f"<audio>{missing}</audio>{ASR}"], 8192)


def test_prompt_over_the_context_names_its_index_and_lengths(demo):
    long_prompt = " word" * 40
    n = len(demo.encode(long_prompt))
    with pytest.raises(ValueError, match=rf"prompt 1 is {n} tokens long .*max_length 20"):
        encode_prompts(demo, ["short", long_prompt], 20)


def test_empty_prompt_is_an_error(demo):
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        encode_prompts(demo, [""], 20)


# ---- command line
# -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A released-layout folder of a tiny fp32 model with the demo tokenizer file."""
    torch.manual_seed(1)
    model = QwenAudio(QwenAudioConfig.from_name("tiny", attention_backend="sdpa")).eval()
    folder = tmp_path_factory.mktemp("checkpoint")
    save_pretrained(model, folder, tokenizer_file=DEMO_RANKS_FILE)
    return folder, model


def test_json_output_parses_and_matches_generate(checkpoint, demo, clips, capsys):
    folder, model = checkpoint
    texts = [prompts(clips)[0], prompts(clips)[2]]
    main(
        [
            "--checkpoint",
            str(folder),
            "--greedy",
            "--json",
            "--max-new-tokens",
            "5",
            *[arg for text in texts for arg in ("--prompt", text)],
        ]
    )
    lines = capsys.readouterr().out.splitlines()
    results = [json.loads(line) for line in lines]
    expected = run(model, demo, texts, GenerationConfig(max_new_tokens=5, stop_ids=(demo.eod,)))
    assert [r["prompt"] for r in results] == texts
    assert [r["ids"] for r in results] == expected
    assert [r["text"] for r in results] == [demo.decode(ids).strip() for ids in expected]


def test_random_init_preset_and_batch_size(demo, capsys):
    main(
        [
            "--preset",
            "tiny",
            "--greedy",
            "--json",
            "--max-new-tokens",
            "3",
            "--batch-size",
            "1",
            "--prompt",
            "one",
            "--prompt",
            "two prompts",
        ]
    )
    results = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    model, tokenizer = load_model(preset="tiny")
    assert [r["ids"] for r in results] == run(
        model,
        tokenizer,
        ["one", "two prompts"],
        GenerationConfig(max_new_tokens=3, stop_ids=(tokenizer.eod,)),
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--checkpoint", "{tmp}/no_such_folder"], "checkpoint folder not found: .*no_such_folder"),
        (["--preset", "huge"], "unknown model preset 'huge'"),
        (["--checkpoint", "{tmp}"], "config file not found: .*config.json"),
        (["--preset", "tiny", "--greedy", "--top-p", "0.5"], "--greedy takes no sampling options"),
        (["--preset", "tiny", "--top-p", "2"], "top_p must lie in"),
    ],
)
def test_cli_bad_input_exits_with_a_message(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([a.format(tmp=tmp_path) for a in args] + ["--prompt", "hello"])
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_cli_missing_audio_exits_naming_it(tmp_path, capsys):
    missing = str(tmp_path / "gone.wav")
    with pytest.raises(SystemExit):
        main(["--preset", "tiny", "--prompt", f"<audio>{missing}</audio>{ASR}"])
    assert f"audio file not found: {missing}" in capsys.readouterr().err


def test_cli_too_short_audio_exits_naming_it(tmp_path, capsys):
    short = tmp_path / "short.wav"
    soundfile.write(
        short, np.full(320, 0.1, np.float32), 16000
    )  # 20 ms: the encoder would get 1 frame
    with pytest.raises(SystemExit):
        main(["--preset", "tiny", "--prompt", f"<audio>{short}</audio>{ASR}"])
    err = capsys.readouterr().err
    assert f"audio file {short} lasts 20.0 ms, shorter than the 30 ms the encoder needs" in err
    assert "Traceback" not in err


# ---- long form
# -------------------------------------------------------------------------------------------------


def test_windows_are_cut_at_the_first_silent_frame_before_each_30_s_limit(tmp_path):
    waveform = torch.from_numpy(
        soundfile.read(write_wav(tmp_path / "long.wav", 70.0, 0, ((27.0, 27.3), (55.5, 55.8))))[0]
    )
    # window 1: search 25-30 s; the first 0.1 s frame (10 ms hop) that is all zeros starts at 27.00
    # s -> cut at its centre 27.05 s = 432800. Window 2 searches 52.05-57.05 s; zeros from 55.50 s
    # -> cut at 888800.
    assert window_bounds(waveform) == [(0, 432800), (432800, 888800), (888800, 1120000)]


def test_thirty_seconds_is_one_window_and_one_sample_more_is_two():
    assert window_bounds(torch.ones(480000)) == [(0, 480000)]
    assert len(window_bounds(torch.ones(480001))) == 2


def test_window_seconds_out_of_range_is_an_error():
    with pytest.raises(ValueError, match="window_seconds must lie in"):
        window_bounds(torch.ones(10), 45.0)


def _canned_windows(monkeypatch, tokenizer, outputs: list[str]) -> list[dict]:
    calls = []

    def fake(model, tokenizer_, windows, **kwargs):
        calls.append({"lengths": [w.numel() for w in windows], **kwargs})
        return [tokenizer.encode(text, TASK_TOKENS) for text in outputs]

    monkeypatch.setattr(longform, "decode_windows", fake)
    return calls


def test_timestamped_words_are_offset_by_their_window_start(demo, tmp_path, monkeypatch):
    path = write_wav(tmp_path / "two.wav", 35.0, 1, ((26.0, 26.2),))  # cut at 26.05 s (as above)
    calls = _canned_windows(
        monkeypatch, demo, ["hello<|0.50|>world<|1.20|>", "<|sil|><|0.30|>again<|0.90|>"]
    )
    result = transcribe_long(None, demo, path, language="en", timestamps=True)
    assert (
        calls[0]["lengths"] == [416800, 560000 - 416800]
        and calls[0]["timestamps"]
        and calls[0]["language"] == "en"
    )
    assert result.windows == ((0.0, 26.05), (26.05, 35.0))
    assert result.words == (
        TimedWord("hello", 0.0, 0.5),
        TimedWord("world", 0.5, 1.2),
        TimedWord("again", 26.35, 26.95),
    )
    assert result.text == "hello world again"


def test_plain_windows_join_with_spaces_or_none_for_chinese(demo, tmp_path, monkeypatch):
    path = write_wav(tmp_path / "two.wav", 35.0, 1)
    _canned_windows(monkeypatch, demo, [" first part", " second part"])
    assert transcribe_long(None, demo, path, language="en").text == "first part second part"
    _canned_windows(monkeypatch, demo, ["你好", "世界"])
    result = transcribe_long(None, demo, path, language="zh")
    assert (result.text, result.words) == ("你好世界", ())


def test_a_window_without_parsable_timestamps_keeps_its_text_and_warns(demo, tmp_path, monkeypatch):
    path = write_wav(tmp_path / "two.wav", 35.0, 1)
    _canned_windows(monkeypatch, demo, ["hello<|0.50|>", "no timestamps here"])
    with pytest.warns(
        UserWarning, match=r"two.wav: window 2\d\.\d\d-35.00 s has no word timestamps"
    ):
        result = transcribe_long(None, demo, path, language="en", timestamps=True)
    assert result.words == (TimedWord("hello", 0.0, 0.5),)
    assert result.text == "hello no timestamps here"


def test_cli_warns_when_truncating_and_long_form_decodes_all_windows_in_one_batch(
    tmp_path, capsys, monkeypatch
):
    path = write_wav(tmp_path / "long.wav", 31.0, 2)
    common = [
        "--preset",
        "tiny",
        "--greedy",
        "--json",
        "--max-new-tokens",
        "2",
        "--prompt",
        f"<audio>{path}</audio>{ASR}",
    ]
    with pytest.warns(
        UserWarning, match=r"long.wav lasts 31.00 s; the model reads only its first 30 s"
    ):
        main(common)
    batch_sizes = []

    def spy(model, input_ids, *args, **kwargs):
        batch_sizes.append(input_ids.shape[0])
        return generate(model, input_ids, *args, **kwargs)

    monkeypatch.setattr(generation, "generate", spy)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no truncation: every window lasts at most 30 s
        main(common + ["--long-form"])
    short, long_form = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert len(short["ids"]) == 2 and batch_sizes == [2]
    assert (
        len(long_form["windows"]) == 2
        and long_form["windows"][-1][1] == 31.0
        and long_form["words"] == []
    )


def test_cli_long_form_needs_a_transcription_prompt(capsys):
    with pytest.raises(SystemExit):
        main(["--preset", "tiny", "--long-form", "--prompt", "no audio"])
    assert "--long-form needs a transcription prompt" in capsys.readouterr().err


@pytest.fixture(scope="module")
def looping(model64) -> QwenAudio:
    """A hand-built looping model: a zero head gives every token the same logit.

    So greedy repeats id 0.
    """
    model = copy.deepcopy(model64)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    return model


def test_hallucination_guard_stops_a_repeating_row_and_flags_it(looping, demo, clips):
    batch = encode_prompts(demo, prompts(clips)[2:], 8192)
    (free,) = generation.answer_batch(looping, demo, batch, replace(GREEDY, max_new_tokens=20))
    assert free.ids == [0] * 20 and free.flag is None  # off by default
    (guarded,) = generation.answer_batch(
        looping, demo, batch, replace(GREEDY, max_new_tokens=20, max_repeats=3)
    )
    assert guarded.ids == [0] * 4 and guarded.flag == "repetition"  # the unigram seen a 4th time


def test_hallucination_guard_stops_a_row_longer_than_its_audio(looping, demo, clips):
    batch = encode_prompts(demo, prompts(clips)[:1], 8192)  # clip a: 1.0 s
    config = replace(GREEDY, max_new_tokens=20, max_tokens_per_audio_second=3.0)
    (answer,) = generation.answer_batch(looping, demo, batch, config)
    assert answer.ids == [0] * 3 and answer.flag == "longer than its audio can hold"


def test_rows_joining_and_leaving_the_engine_get_their_solo_tokens(model64, demo, clips):
    """Continuous batching: prompts join free slots mid-decode and a row leaves early; every row
    still gets the tokens (greedy) or the seeded sample it gets alone."""
    texts = prompts(clips)
    sample = replace(GREEDY, max_new_tokens=8, do_sample=True, temperature=1.5, seed=11)
    greedy = replace(GREEDY, max_new_tokens=8)
    solo = {
        name: run(model64, demo, [texts[i]], config)[0]
        for name, i, config in (
            ("g0", 0, greedy),
            ("s1", 1, sample),
            ("g2", 2, greedy),
            ("s0", 0, sample),
        )
    }
    engine = generation.DecodeEngine(model64, slots=3, max_length=256, vocab_size=demo.n_vocab)
    engine.admit([0], encode_prompts(demo, [texts[0]], 8192), [greedy])
    engine.step()
    engine.step()
    engine.admit([2, 1], encode_prompts(demo, [texts[1], texts[2]], 8192), [sample, greedy])
    names = {0: "g0", 2: "s1", 1: "g2"}
    got: dict[str, list[int]] = {}
    steps = 0
    while any(engine.sequences):
        engine.step()
        engine.fetch()
        steps += 1
        for slot, sequence in enumerate(engine.sequences):
            if sequence is not None and sequence.finish:
                got[names[slot]] = sequence.tokens
                engine.release(slot)
                if names[slot] == "g0":  # slot 0 frees: a seeded sample joins it
                    engine.admit([0], encode_prompts(demo, [texts[0]], 8192), [sample])
                    names[0] = "s0"
        if steps == 3:  # the greedy row in slot 1 leaves early (a client that disconnected)
            got["g2"] = engine.sequences[1].tokens
            engine.release(1)
    assert got["g2"] == solo["g2"][: len(got["g2"])]
    assert {name: got[name] for name in ("g0", "s1", "s0")} == {
        name: solo[name] for name in ("g0", "s1", "s0")
    }


def _engine_tokens(engine, demo, texts, configs) -> list[list[int]]:
    """Every prompt admitted at once into slots 0..n-1 and decoded to its end."""
    engine.admit(range(len(texts)), encode_prompts(demo, texts, 8192), configs)
    while engine.running():
        engine.step()
    engine.fetch()
    tokens = [sequence.tokens for sequence in engine.sequences[: len(texts)]]
    for slot in range(len(texts)):
        engine.release(slot)
    return tokens


def test_eager_decoding_step_over_the_static_cache_equals_generate_and_graphs_need_cuda(
    model64, demo, clips, alone
):
    """The CPU twin of the CUDA-graph test: the same engine and cache, stepped eagerly."""
    engine = generation.DecodeEngine(model64, slots=4, max_length=256, vocab_size=demo.n_vocab)
    assert _engine_tokens(engine, demo, prompts(clips), [GREEDY] * 3) == alone
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA model"):
        engine.capture()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_decoding_equals_eager_decoding(model64, demo, clips):
    model = copy.deepcopy(model64).cuda()
    texts = prompts(clips)
    configs = [
        GREEDY,
        replace(GREEDY, do_sample=True, seed=4),
        replace(GREEDY, do_sample=True, top_p=0.8, seed=5),
    ]
    eager = generation.DecodeEngine(model, slots=8, max_length=256, vocab_size=demo.n_vocab)
    graphed = generation.DecodeEngine(model, slots=8, max_length=256, vocab_size=demo.n_vocab)
    graphed.capture(buckets=(1, 4, 8))
    assert _engine_tokens(graphed, demo, texts, configs) == _engine_tokens(
        eager, demo, texts, configs
    )
    assert _engine_tokens(graphed, demo, texts[:1], configs[:1]) == _engine_tokens(
        eager, demo, texts[:1], configs[:1]
    )
