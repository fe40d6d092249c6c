"""Chat: ChatML ids, history window, terminal front end.

The ids are the release's ChatML ids for a multi-turn, multi-audio conversation.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile
import torch

from qwen_audio import chat as chat_module
from qwen_audio import generate as generation
from qwen_audio.batching import encode_prompts
from qwen_audio.chat import chat, main
from qwen_audio.checkpoint import load_model
from qwen_audio.config import QwenAudioConfig
from qwen_audio.generate import GenerationConfig
from qwen_audio.prompts import encode_text

SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>"
CHATML = {"<|im_start|>", "<|im_end|>"}


def write_wav(path, seconds: float, seed: int) -> str:
    audio = 0.1 * np.random.default_rng(seed).standard_normal(round(seconds * 16000))
    soundfile.write(path, audio.astype(np.float32), 16000)
    return str(path)


@pytest.fixture
def canned(monkeypatch):
    """Replace the model: record each prompt batch given to ``generate``.

    It answers with the queued ids.
    """
    calls, answers = [], []

    def fake_generate(model, input_ids, attention_mask, config, flags=None, **kwargs):
        calls.append(
            {"ids": input_ids[0].tolist(), "mask": attention_mask, "config": config, **kwargs}
        )
        if flags is not None:
            flags.append(None)  # the hallucination guard stops no row
        return [answers.pop(0)]

    monkeypatch.setattr(generation, "generate", fake_generate)  # what answer_prompts decodes with
    return calls, answers


STAND_IN = torch.nn.Linear(
    1, 1
)  # chat() only asks the model for its device and mel bins once generate is replaced
STAND_IN.config = QwenAudioConfig.from_name("qwen-audio")


def test_two_turns_with_numbered_audios_give_the_released_chatml_ids(released, tmp_path, canned):
    calls, answers = canned
    dog, cat = write_wav(tmp_path / "dog.wav", 1.0, 0), write_wav(tmp_path / "cat.wav", 0.5, 1)
    answers += [
        released.encode("It is a dog.") + [released.im_end, released.eod],
        released.encode(" The first one. ") + [released.im_start, *released.encode("user")],
    ]

    response, history = chat(STAND_IN, released, [{"audio": dog}, {"text": "What is it?"}])
    assert response == "It is a dog."
    assert history == [(f"Audio 1:<audio>{dog}</audio>\nWhat is it?", "It is a dog.")]

    response, history = chat(
        STAND_IN,
        released,
        [{"audio": dog}, {"audio": cat}, {"text": "Which is louder?"}],
        history,
        config=GenerationConfig(max_new_tokens=8),
    )
    assert (
        response == "The first one."
    )  # cut at <|im_start|> although the config has no stop ids, stripped
    assert len(history) == 2 and history[1][1] == "The first one."

    expected = (
        f"{SYSTEM}\n<|im_start|>user\nAudio 1:<audio>{dog}</audio>\nWhat is it?<|im_end|>\n"
        f"<|im_start|>assistant\nIt is a dog.<|im_end|>\n"
        f"<|im_start|>user\nAudio 1:<audio>{dog}</audio>\nAudio 2:<audio>{cat}</audio>\nWhich is louder?"
        f"<|im_end|>\n<|im_start|>assistant\n"
    )
    expected_ids = encode_text(released, expected, allowed_special=CHATML).ids
    assert calls[1]["ids"] == expected_ids
    assert expected_ids[:3] == [151644, 8948, 198]  # <|im_start|> "system" "\n"
    assert (
        expected_ids.count(155163) == 3 and expected_ids.count(151851) == 25 + 25 + 12
    )  # 1 s, 1 s, 0.5 s
    assert calls[1]["audio_mel_lengths"].tolist() == [100, 100, 50]
    assert calls[0]["config"] == GenerationConfig.chat(released)
    assert calls[0]["vocab_size"] == 155165


def test_oldest_turns_are_dropped_beyond_the_window(released, canned):
    calls, answers = canned
    history = [("first question", "first answer"), ("second question", "second answer")]
    turn = "\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n{}<|im_end|>"
    kept = len(released.encode(SYSTEM + turn.format(*history[1]), allowed_special=CHATML))
    query = "\n<|im_start|>user\nthird question<|im_end|>\n<|im_start|>assistant\n"

    answers += [[released.im_end]] * 3
    chat(STAND_IN, released, "third question", history, max_window_size=kept + 1)
    assert calls[-1]["ids"] == released.encode(
        SYSTEM + turn.format(*history[1]) + query, allowed_special=CHATML
    )
    chat(
        STAND_IN, released, "third question", history, max_window_size=kept
    )  # strictly under: nothing kept
    assert calls[-1]["ids"] == released.encode(SYSTEM + query, allowed_special=CHATML)
    chat(STAND_IN, released, "third question", history)  # the released 6144 keeps everything
    everything = SYSTEM + "".join(turn.format(*pair) for pair in history) + query
    assert calls[-1]["ids"] == released.encode(everything, allowed_special=CHATML)


def reference_answer(model, tokenizer, query: str, max_new_tokens: int) -> str:
    """Greedy answer to ``query`` alone, written out by hand: the release's ChatML text of the turn,
    then one full forward (no cache) per new token until a chat stop token, decoded and stripped."""
    prompt = f"{SYSTEM}\n<|im_start|>user\n{query}<|im_end|>\n<|im_start|>assistant\n"
    batch = encode_prompts(tokenizer, [prompt], 8192)
    generated: list[int] = []
    while len(generated) < max_new_tokens:
        ids = torch.cat([batch.input_ids, torch.tensor([generated], dtype=torch.long)], dim=1)
        with torch.no_grad():
            logits = model(
                ids, audio_mel=batch.audio_mel, audio_mel_lengths=batch.audio_mel_lengths
            ).logits
        token = int(logits[0, -1, : tokenizer.n_vocab].argmax())
        if token in (tokenizer.im_end, tokenizer.im_start, tokenizer.eod):
            break
        generated.append(token)
    return tokenizer.decode(generated).strip()


def test_chat_runs_on_a_tiny_model_with_audio(tmp_path):
    model, tokenizer = load_model(preset="tiny")
    clip = write_wav(tmp_path / "clip.wav", 0.6, 2)
    query = f"<audio>{clip}</audio>What is this?"
    greedy_config = GenerationConfig.chat(tokenizer, do_sample=False, max_new_tokens=4)
    greedy, history = chat(model, tokenizer, query, config=greedy_config)
    assert greedy == reference_answer(model, tokenizer, query, 4) and history == [(query, greedy)]
    assert greedy  # the random model says something, so the comparison above compares text
    sampled = GenerationConfig.chat(tokenizer, max_new_tokens=4, seed=0)
    first = chat(model, tokenizer, query, config=sampled)[0]
    assert chat(model, tokenizer, query, config=sampled)[0] == first


def test_terminal_resets_and_quits(monkeypatch):
    seen = []

    def fake_chat(model, tokenizer, query, history, system, config):
        seen.append((query, list(history)))
        response = f"answer {len(seen)}"
        return response, history + [(query, response)]

    monkeypatch.setattr(chat_module, "chat", fake_chat)
    out = io.StringIO()
    main(["--preset", "tiny"], io.StringIO("hello\n\nagain\n/reset\nthird\n/quit\nnever\n"), out)
    assert seen == [("hello", []), ("again", [("hello", "answer 1")]), ("third", [])]
    lines = out.getvalue().splitlines()
    assert lines[1:] == ["answer 1", "answer 2", "(history cleared)", "answer 3"]


def test_terminal_reports_a_missing_audio_and_goes_on_until_end_of_input(tmp_path):
    missing = tmp_path / "gone.wav"
    out = io.StringIO()
    main(
        ["--preset", "tiny", "--greedy", "--max-new-tokens", "2"],
        io.StringIO(f"<audio>{missing}</audio>hi\nhello\n"),
        out,
    )
    lines = out.getvalue().splitlines()
    # the next query was still answered, as if it were the first (the failed one is not in history)
    model, tokenizer = load_model(preset="tiny")
    answer = reference_answer(model, tokenizer, "hello", 2)
    assert lines[1:] == [f"error: audio file not found: {missing}", answer]


def test_terminal_unknown_checkpoint_exits(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--checkpoint", str(tmp_path / "missing")], io.StringIO(""), io.StringIO())
    assert exit_info.value.code == 2 and "checkpoint folder not found" in capsys.readouterr().err
