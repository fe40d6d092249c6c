"""The OpenAI-compatible server, through the real ``openai`` client.

The tests run against a server started on a free port.

The served model is tiny, random and in float64: batched generation is exact, and in float64 no
argmax near-tie can flip between a batch and a single run by rounding, so "equal to the request sent
alone" is an exact comparison that cannot flake, while a random model answers every prompt
differently (a mixed-up row would show). Only the embeddings of the transcription prompts' tokens
are tuned (:func:`tune`), so that transcriptions have a known, hand-written answer; chat answers are
compared with ``qwen_audio.chat`` run in this process on the same weights.
"""

from __future__ import annotations

import base64
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import openai
import pytest
import soundfile
import torch

from qwen_audio.audio import load_audio
from qwen_audio.batching import batch_prompts
from qwen_audio.chat import build_context, chat
from qwen_audio.checkpoint import load_model, save_pretrained
from qwen_audio.config import QwenAudioConfig
from qwen_audio.generate import GenerationConfig
from qwen_audio.longform import detect_languages
from qwen_audio.model import QwenAudio
from qwen_audio.prompts import TimedWord, encode_task, format_timestamped_words
from qwen_audio.tokenizer import DEMO_RANKS_FILE, LANGUAGES, QwenAudioTokenizer

SR = 16000
WORDS = [
    TimedWord("three", 0.1, 0.4),
    TimedWord("four", 0.5, 0.9),
]  # the SRWT target joins the 0.1 s gaps


def write_wav(path, seconds: float, seed: int, rate: int = SR, channels: int = 1) -> str:
    rng = np.random.default_rng(seed)
    n = round(seconds * rate)
    tone = 0.2 * np.sin(2 * np.pi * (200 + 50 * seed) * np.arange(n) / rate)
    audio = 0.1 * rng.standard_normal((n, channels)) + tone[:, None]
    soundfile.write(path, audio.astype(np.float32), rate)
    return str(path)


def tune(tokenizer: QwenAudioTokenizer, clip: str) -> QwenAudio:
    """A random tiny float64 model whose embedding rows of the transcription prompts' tokens (tags,
    target words, timestamps) are tuned, a few seconds, so that it transcribes ``clip`` as "one two"
    (ASR) and as WORDS (SRWT). No other weight changes, so chat answers stay those of a random
    model: different for every prompt."""
    torch.manual_seed(1)
    model = QwenAudio(QwenAudioConfig.from_name("tiny", attention_backend="sdpa")).double()
    examples = [
        encode_task(tokenizer, "asr", clip, "one two", audio_language="en"),
        encode_task(
            tokenizer,
            "srwt",
            clip,
            format_timestamped_words(WORDS, duration=1.0),
            audio_language="en",
        ),
    ]
    batch = batch_prompts(examples, tokenizer.eod)
    labels = torch.full_like(batch.input_ids, -100)
    for row, example in enumerate(examples):
        labels[row, labels.shape[1] - len(example.labels) :] = torch.tensor(example.labels)
    positions = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
    tuned = sorted(
        {i for e in examples for i in e.ids}
        - {tokenizer.audio_start, tokenizer.audio_end, tokenizer.audio_pad, tokenizer.eod}
    )
    embedding = model.transformer.wte.weight
    rows = torch.zeros(embedding.shape[0], 1, dtype=embedding.dtype)
    rows[tuned] = 1
    embedding.register_hook(lambda grad: grad * rows)
    optimizer = torch.optim.Adam([embedding], lr=0.1)
    for _ in range(100):
        loss = model(
            batch.input_ids,
            audio_mel=batch.audio_mel,
            audio_mel_lengths=batch.audio_mel_lengths,
            attention_mask=batch.attention_mask,
            position_ids=positions,
            labels=labels,
        ).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


class Served:
    def __init__(self, url: str, folder: str, log: str, clips: dict[str, str]) -> None:
        self.url, self.folder, self.log, self.clips = url, folder, log, clips
        self.model, self.tokenizer = load_model(folder, dtype=torch.float64)
        self.client = openai.OpenAI(
            base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120
        )
        self.name = os.path.basename(folder)

    def batch_sizes(self) -> list[int]:
        with open(self.log) as f:
            return [int(n) for n in re.findall(r"batch=(\d+)", f.read())]


@pytest.fixture(scope="module")
def served(tmp_path_factory, serve_checkpoint):
    folder = tmp_path_factory.mktemp("serve")
    clips = {
        "one": write_wav(folder / "one.wav", 1.0, 0),
        "stereo": write_wav(folder / "stereo.flac", 0.8, 1, rate=44100, channels=2),
        "long": write_wav(folder / "long.wav", 31.0, 2),
    }
    clips.update(
        {f"clip{i}": write_wav(folder / f"clip{i}.wav", 0.3 + 0.1 * i, 3 + i) for i in range(8)}
    )
    tokenizer = QwenAudioTokenizer.demo()
    checkpoint = str(folder / "tiny-served")
    save_pretrained(tune(tokenizer, clips["one"]), checkpoint, tokenizer_file=DEMO_RANKS_FILE)
    log = str(folder / "server.log")
    with serve_checkpoint(
        checkpoint, log, "--dtype", "float64", "--max-slots", "16", "--max-model-len", "1024"
    ) as url:
        yield Served(url, checkpoint, log, clips)


def audio_part(path: str) -> dict:
    with open(path, "rb") as f:
        data = base64.b64encode(f.read()).decode()
    return {
        "type": "input_audio",
        "input_audio": {"data": data, "format": os.path.splitext(path)[1][1:]},
    }


def ask(served: Served, messages: list[dict], **options) -> openai.types.chat.ChatCompletion:
    options = {"temperature": 0, "max_tokens": 6, **options}
    return served.client.chat.completions.create(model=served.name, messages=messages, **options)


GREEDY = {"do_sample": False, "max_new_tokens": 6}


def test_health_and_models(served):
    assert httpx.get(f"{served.url}/health").text == "ok"
    assert [model.id for model in served.client.models.list()] == ["tiny-served"]


def test_chat_answers_and_usage_equal_qwen_audio_chat(served):
    one, stereo = served.clips["one"], served.clips["stereo"]
    config = GenerationConfig.chat(served.tokenizer, **GREEDY)
    answer = ask(
        served,
        [{"role": "user", "content": [audio_part(one), {"type": "text", "text": "What is it?"}]}],
    )
    expected, history = chat(
        served.model, served.tokenizer, [{"audio": one}, {"text": "What is it?"}], config=config
    )
    assert answer.choices[0].message.content == expected
    prompt = build_context(served.tokenizer, history[0][0], [], "You are a helpful assistant.")
    assert answer.usage.prompt_tokens == len(prompt.ids)
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens

    # a system prompt, a past turn, two audios (44.1 kHz stereo flac among them) numbered Audio 1
    # and 2
    messages = [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": [audio_part(one), {"type": "text", "text": "And this?"}]},
        {"role": "assistant", "content": "A tone."},
        {
            "role": "user",
            "content": [
                audio_part(one),
                audio_part(stereo),
                {"type": "text", "text": "Which is louder?"},
            ],
        },
    ]
    expected, _ = chat(
        served.model,
        served.tokenizer,
        [{"audio": one}, {"audio": stereo}, {"text": "Which is louder?"}],
        history=[(f"Audio 1:<audio>{one}</audio>\nAnd this?", "A tone.")],
        system="You answer briefly.",
        config=config,
    )
    assert ask(served, messages).choices[0].message.content == expected


def _requests(served: Served) -> list[dict]:
    """16 different requests: audios of different lengths, texts, token limits.

    One of them is a seeded sampled request.
    """
    requests = []
    for i in range(16):
        content = [{"type": "text", "text": f"Question number {i}" + " please" * (i % 3)}]
        if i % 2 == 0:
            content.insert(0, audio_part(served.clips[f"clip{i // 2}"]))
        options = {"max_tokens": 3 + i % 5}
        if i == 5:
            options = {"temperature": 0.9, "seed": 7, "max_tokens": 6}
        requests.append({"messages": [{"role": "user", "content": content}], **options})
    return requests


def test_16_concurrent_requests_each_equal_the_request_sent_alone(served):
    requests = _requests(served)
    alone = [ask(served, **request).choices[0].message.content for request in requests]
    sizes_before = len(served.batch_sizes())
    with ThreadPoolExecutor(16) as pool:
        together = list(
            pool.map(lambda request: ask(served, **request).choices[0].message.content, requests)
        )
    assert together == alone
    assert max(served.batch_sizes()[sizes_before:]) > 1  # they were batched
    config = GenerationConfig.chat(
        served.tokenizer, do_sample=False, max_new_tokens=4
    )  # request 1 (no audio)
    assert (
        alone[1]
        == chat(served.model, served.tokenizer, "Question number 1 please", config=config)[0]
    )


def test_streamed_text_equals_the_text_and_stop_cuts_it(served):
    messages = [
        {
            "role": "user",
            "content": [audio_part(served.clips["one"]), {"type": "text", "text": "Go on."}],
        }
    ]
    whole = ask(served, messages, max_tokens=12)
    text = whole.choices[0].message.content
    chunks = list(ask(served, messages, max_tokens=12, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason == "length"
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens == 12

    stop = text[len(text) // 2 : len(text) // 2 + 2]
    cut = text[: text.index(stop)].strip()
    assert ask(served, messages, max_tokens=12, stop=[stop]).choices[0].message.content == cut
    streamed = ask(served, messages, max_tokens=12, stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == cut


def transcribe(served: Served, clip: str, **options):
    with open(served.clips[clip], "rb") as f:
        return served.client.audio.transcriptions.create(model=served.name, file=f, **options)


def test_transcription_in_every_response_format(served):
    assert transcribe(served, "one", language="en").text == "one two"
    assert transcribe(served, "one", language="en", response_format="text").strip() == "one two"
    assert (
        transcribe(served, "one", language="en", response_format="srt")
        == "1\n00:00:00,000 --> 00:00:01,000\none two\n\n"
    )
    assert (
        transcribe(served, "one", language="en", response_format="vtt")
        == "WEBVTT\n\n00:00.000 --> 00:01.000\none two\n\n"
    )
    verbose = transcribe(
        served,
        "one",
        language="en",
        response_format="verbose_json",
        timestamp_granularities=["word"],
        prompt="ignored",
        temperature=0,
    )
    assert (verbose.text, verbose.language, verbose.duration) == ("three four", "en", 1.0)
    words = [(w.word, w.start, w.end) for w in verbose.words]
    assert words == [
        ("three", 0.0, 0.4),
        ("four", 0.4, 0.9),
    ]  # the SRWT target's units (gaps under 0.2 s join)
    assert all(a[2] <= b[1] for a, b in zip(words, words[1:]))
    assert [(s.start, s.end, s.text) for s in verbose.segments] == [(0.0, 1.0, "three four")]


def test_transcription_detects_the_language_and_reads_long_audio_in_windows(served):
    detected = transcribe(served, "stereo", response_format="verbose_json")
    expected = detect_languages(
        served.model, served.tokenizer, [load_audio(served.clips["stereo"])]
    )
    assert detected.language == expected[0] and detected.language in LANGUAGES
    long = transcribe(served, "long", language="en", response_format="verbose_json")
    assert long.duration == 31.0
    assert (
        len(long.segments) == 2 and long.segments[0].start == 0.0 and long.segments[-1].end == 31.0
    )
    assert 25.0 <= long.segments[0].end == long.segments[1].start <= 30.0


def _chat_error(served: Served, messages, model=None, **options):
    options = {"max_tokens": 2, **options}
    return served.client.chat.completions.create(
        model=model or served.name, messages=messages, temperature=0, **options
    )


CORRUPT = {
    "type": "input_audio",
    "input_audio": {"data": base64.b64encode(b"RIFF not really").decode(), "format": "wav"},
}
AAC = {
    "type": "input_audio",
    "input_audio": {"data": base64.b64encode(b"\x00" * 64).decode(), "format": "aac"},
}


@pytest.mark.parametrize(
    "case, param",
    [
        ("corrupt audio", "messages[0].content[0].input_audio.data"),
        ("unsupported format", "messages[0].content[0].input_audio.format"),
        ("empty messages", "messages"),
        ("over the context", "messages"),
        ("past --max-model-len", "max_tokens"),
        ("unknown model", "model"),
        ("streamed unknown model", "model"),
        ("corrupt file", "file"),
        ("unsupported file", "file"),
        ("transcription unknown model", "model"),
    ],
)
def test_bad_requests_get_an_openai_400_naming_the_field_and_the_server_goes_on(
    served, tmp_path, case, param
):
    corrupt_file = tmp_path / "broken.wav"
    corrupt_file.write_bytes(b"RIFF\x00\x00 not audio")
    m4a = tmp_path / "clip.m4a"
    m4a.write_bytes(b"\x00" * 64)
    requests = {
        "corrupt audio": lambda: _chat_error(served, [{"role": "user", "content": [CORRUPT]}]),
        "unsupported format": lambda: _chat_error(served, [{"role": "user", "content": [AAC]}]),
        "empty messages": lambda: _chat_error(served, []),
        "over the context": lambda: _chat_error(
            served, [{"role": "user", "content": "word " * 9000}]
        ),
        "past --max-model-len": lambda: _chat_error(
            served, [{"role": "user", "content": "hi"}], max_tokens=1020
        ),
        "unknown model": lambda: _chat_error(
            served, [{"role": "user", "content": "hi"}], model="gpt-4o"
        ),
        "streamed unknown model": lambda: _chat_error(
            served, [{"role": "user", "content": "hi"}], model="x", stream=True
        ),
        "corrupt file": lambda: served.client.audio.transcriptions.create(
            model=served.name, file=corrupt_file.open("rb")
        ),
        "unsupported file": lambda: served.client.audio.transcriptions.create(
            model=served.name, file=m4a.open("rb")
        ),
        "transcription unknown model": lambda: served.client.audio.transcriptions.create(
            model="whisper-1", file=open(served.clips["one"], "rb")
        ),
    }
    with pytest.raises(openai.BadRequestError) as error:
        requests[case]()
    assert error.value.status_code == 400
    assert (error.value.param, error.value.type) == (param, "invalid_request_error")
    assert param.split("[")[0] in error.value.message
    assert transcribe(served, "one", language="en").text == "one two"  # still serving


def _mixed_requests(served: Served) -> list[tuple[str, dict]]:
    """16 different requests, four of each kind: chat greedy, chat seeded-sampled (streamed),
    transcription with word timestamps, chat greedy streamed; different audios, texts and token
    limits."""
    requests = []
    for i in range(16):
        kind = ("greedy", "sampled", "transcription", "streamed")[i % 4]
        if kind == "transcription":
            requests.append((kind, {"clip": ("one", "stereo", "clip3", "clip5")[i // 4]}))
            continue
        content = [{"type": "text", "text": f"Say something, {i}."}]
        if i % 8 < 4:
            content.insert(0, audio_part(served.clips[f"clip{i // 2}"]))
        options = {"messages": [{"role": "user", "content": content}], "max_tokens": 4 + i % 5}
        if kind == "sampled":
            options |= {"temperature": 1.0, "top_p": 0.9, "seed": 100 + i, "stream": True}
        if kind == "streamed":
            options["stream"] = True
        requests.append((kind, options))
    return requests


def _answer(served: Served, kind: str, options: dict):
    if kind == "transcription":
        answer = transcribe(
            served,
            options["clip"],
            language="en",
            response_format="verbose_json",
            timestamp_granularities=["word"],
        )
        return answer.text, [(w.word, w.start, w.end) for w in answer.words or []]
    if options.get("stream"):
        chunks = list(ask(served, **options))
        return "".join(c.choices[0].delta.content or "" for c in chunks), chunks[-1].choices[
            0
        ].finish_reason
    answer = ask(served, **options)
    return answer.choices[0].message.content, answer.choices[0].finish_reason


def test_64_concurrent_mixed_requests_each_equal_their_solo_answer(served):
    """Continuous batching: greedy, seeded-sampled, transcription and streamed rows join and leave
    one running batch; each answer equals the same request sent alone."""
    requests = _mixed_requests(served)
    alone = [_answer(served, kind, options) for kind, options in requests]
    sizes_before = len(served.batch_sizes())
    with ThreadPoolExecutor(64) as pool:
        together = list(pool.map(lambda i: _answer(served, *requests[i % 16]), range(64)))
    assert together == alone * 4
    assert max(served.batch_sizes()[sizes_before:]) > 4  # they decoded together


def test_an_abandoned_stream_stops_decoding_and_frees_its_slot(served):
    body = {
        "model": served.name,
        "stream": True,
        "max_tokens": 900,
        "temperature": 0,
        "messages": [{"role": "user", "content": "Tell me a long story."}],
    }
    with httpx.stream(
        "POST", f"{served.url}/v1/chat/completions", json=body, timeout=60
    ) as response:
        chunks = (line for line in response.iter_lines() if line.startswith("data: "))
        next(chunks)  # the role chunk, sent before the job has a slot
        next(chunks)  # the first token: generation has begun; the client leaves
    deadline = time.monotonic() + 60
    while not (
        cancelled := re.findall(
            r"cancelled after (\d+) tokens, (\d+) slots freed", open(served.log).read()
        )
    ):
        assert time.monotonic() < deadline, "the abandoned request was never cancelled"
        time.sleep(0.2)
    tokens, slots = map(int, cancelled[-1])
    assert (
        tokens < 900 and slots == 1
    )  # it stopped consuming decoding steps long before its 900 tokens
    assert transcribe(served, "one", language="en").text == "one two"  # and the server goes on


@pytest.fixture(scope="module")
def cramped(served, tmp_path_factory, serve_checkpoint):
    """The same checkpoint served with one slot, no queue and a context shorter than the prompt of
    a 30 s window."""
    folder = tmp_path_factory.mktemp("cramped")
    options = (
        "--dtype",
        "float64",
        "--max-slots",
        "1",
        "--max-queue",
        "0",
        "--max-model-len",
        "700",
    )
    with serve_checkpoint(served.folder, str(folder / "server.log"), *options) as url:
        yield url, write_wav(folder / "thirty.wav", 30.0, 4)


def test_past_max_slots_plus_max_queue_a_request_gets_a_503_with_retry_after(cramped):
    url, _ = cramped
    body = {
        "model": "tiny-served",
        "stream": True,
        "max_tokens": 600,
        "temperature": 0,
        "messages": [{"role": "user", "content": "Tell me a long story."}],
    }
    short = {**body, "stream": False, "max_tokens": 2}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as response:
        lines = response.iter_lines()  # kept: a dropped iterator closes the stream
        assert next(lines).startswith("data: ")  # it holds the only slot; the queue holds none
        busy = httpx.post(f"{url}/v1/chat/completions", json=short, timeout=60)
    assert busy.status_code == 503 and busy.headers["Retry-After"] == "1"
    assert busy.json()["error"]["type"] == "server_busy"
    deadline = time.monotonic() + 60  # the stream's client left: the server takes the next request
    post = lambda: httpx.post(f"{url}/v1/chat/completions", json=short, timeout=60)  # noqa: E731
    while (answer := post()).status_code == 503:
        assert time.monotonic() < deadline, "the server stayed busy after the stream's client left"
        time.sleep(0.2)
    assert answer.status_code == 200


def test_a_transcription_whose_window_overflows_the_context_gets_a_400_naming_the_file(cramped):
    url, thirty = cramped
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120)
    with pytest.raises(openai.BadRequestError) as error, open(thirty, "rb") as f:
        client.audio.transcriptions.create(model="tiny-served", file=f, language="en")
    assert (error.value.param, error.value.type) == ("file", "invalid_request_error")
    assert "700" in error.value.message and "--max-model-len" in error.value.message
    answer = client.chat.completions.create(
        model="tiny-served",
        temperature=0,
        max_tokens=2,
        messages=[{"role": "user", "content": "hi"}],
    )
    assert answer.choices[0].finish_reason in ("length", "stop")  # still serving
