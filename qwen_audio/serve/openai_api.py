"""OpenAI's API mapped onto Qwen-Audio: request validation, chat messages -> the release's ChatML
prompt, transcription forms -> jobs, and the response bodies (chat completions, chunks,
transcriptions).

Decoding defaults are the release's chat settings (``chat_generation_config.json``: sampling, top-p
0.5, 512 new tokens). ``temperature`` 0 decodes greedily, and ``temperature``, ``top_p``, ``seed``,
``max_tokens`` override the rest. A bad request raises :class:`RequestError` naming the field, as
OpenAI's ``param`` does.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import time
import uuid
from typing import Literal

import soundfile
import torch
from pydantic import BaseModel, ValidationError
from whisper.utils import WriteSRT, WriteVTT

from qwen_audio.audio import SAMPLE_RATE, load_audio
from qwen_audio.chat import MAX_WINDOW_SIZE, build_context
from qwen_audio.clips import Recording
from qwen_audio.generate import GenerationConfig
from qwen_audio.prompts import DEFAULT_SYSTEM, AudioItem
from qwen_audio.serve.scheduler import ChatJob, TranscriptionJob
from qwen_audio.tokenizer import AUDIO_END, AUDIO_START, LANGUAGES, Tokenizer

AUDIO_FORMATS = ("wav", "flac", "mp3", "ogg")  # what soundfile (libsndfile) decodes
RESPONSE_FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
GRANULARITIES = ("word", "segment")


class RequestError(ValueError):
    """A bad request: HTTP 400 with OpenAI's ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, param: str | None, message: str) -> None:
        super().__init__(message)
        self.param = param

    def body(self) -> dict:
        return {
            "error": {
                "message": str(self),
                "type": "invalid_request_error",
                "param": self.param,
                "code": None,
            }
        }


class InputAudio(BaseModel):
    data: str
    format: str


class ContentPart(BaseModel):
    type: str
    text: str | None = None
    input_audio: InputAudio | None = None


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str | list[ContentPart]


class ChatRequest(BaseModel):
    model: str
    messages: list[ChatMessage]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    n: int = 1


def _param(error: ValidationError) -> str:
    """``messages[0].content[1].input_audio`` from pydantic's location of the first error."""
    location = error.errors()[0]["loc"]
    name = ""
    for part in location:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name


def parse_chat_request(body: object) -> ChatRequest:
    try:
        return ChatRequest.model_validate(body)
    except ValidationError as err:
        raise RequestError(_param(err), f"{_param(err)}: {err.errors()[0]['msg']}") from None


def check_model(requested: str, served: str) -> None:
    if requested != served:
        raise RequestError(
            "model", f"model {requested!r} is not served here; this server serves {served!r}"
        )


def decode_audio(data: bytes, param: str) -> torch.Tensor:
    """16 kHz mono waveform of an encoded file (any rate, mono or stereo)."""
    try:
        return load_audio(io.BytesIO(data))
    except ValueError as err:  # AudioError: undecodable, empty or non-finite
        raise RequestError(param, f"{param}: {err}") from None


def audio_seconds(data: bytes) -> float | None:
    """The duration an encoded file's header gives, without decoding it.

    It is None when the header does not read. :func:`decode_audio` then names the problem."""
    try:
        return soundfile.info(io.BytesIO(data)).duration
    except (soundfile.LibsndfileError, RuntimeError, TypeError):
        return None


def check_seconds(
    data: bytes, param: str, limit: float | None, option: str, advice: str = ""
) -> None:
    seconds = audio_seconds(data)
    if limit is not None and seconds is not None and seconds > limit:
        raise RequestError(
            param,
            f"{param}: the audio lasts {seconds:.1f} s, longer than this server's limit of "
            f"{limit:g} s ({option}){advice}",
        )


def _user_items(
    message: ChatMessage, index: int, recordings: list[Recording], max_seconds: float | None = None
) -> list[dict[str, AudioItem]]:
    """The items of one user message: text parts as written, audio parts as :class:`Recording`.

    Each recording is named by its request field, and appended to ``recordings``. An audio part
    longer than ``max_seconds`` (read from its header, before decoding) is refused.
    """
    if isinstance(message.content, str):
        parts = [ContentPart(type="text", text=message.content)]
    else:
        parts = message.content
    items = []
    for number, part in enumerate(parts):
        param = f"messages[{index}].content" + (
            f"[{number}]" if not isinstance(message.content, str) else ""
        )
        if part.type == "text" and part.text is not None:
            if AUDIO_START in part.text or AUDIO_END in part.text:
                raise RequestError(
                    param, f"{param}: audio goes in input_audio parts, not as {AUDIO_START} text"
                )
            items.append({"text": part.text})
        elif part.type == "input_audio" and part.input_audio is not None:
            audio_format = part.input_audio.format.lower()
            if audio_format not in AUDIO_FORMATS:
                raise RequestError(
                    f"{param}.input_audio.format",
                    f"{param}.input_audio.format: unsupported audio "
                    f"format {part.input_audio.format!r}; use one of {', '.join(AUDIO_FORMATS)}",
                )
            try:
                data = base64.b64decode(part.input_audio.data, validate=True)
            except (binascii.Error, ValueError):
                raise RequestError(
                    f"{param}.input_audio.data", f"{param}.input_audio.data: not valid base64"
                ) from None
            check_seconds(
                data,
                f"{param}.input_audio.data",
                max_seconds,
                "--max-audio-seconds",
                "; transcribe longer audio with /v1/audio/transcriptions",
            )
            waveform = decode_audio(data, f"{param}.input_audio.data")
            recording = Recording(waveform, f"{param}.input_audio")
            recordings.append(recording)
            items.append({"audio": recording})
        else:
            raise RequestError(
                f"{param}.type",
                f"{param}.type: expected a 'text' part with text or an "
                f"'input_audio' part with input_audio, got {part.type!r}",
            )
    return items


def _plain_text(message: ChatMessage, index: int) -> str:
    if isinstance(message.content, str):
        return message.content
    if any(part.type != "text" or part.text is None for part in message.content):
        raise RequestError(
            f"messages[{index}].content",
            f"messages[{index}].content: {message.role} messages hold text parts only",
        )
    return "".join(part.text for part in message.content)


def chat_job(
    tokenizer: Tokenizer, request: ChatRequest, max_audio_seconds: float | None = None
) -> tuple[ChatJob, float]:
    """The job for a chat request and the seconds of audio it holds.

    An audio part longer than ``max_audio_seconds`` (read from its header, before decoding) is
    refused. The leading system message (else the release's default) is the system prompt.
    User/assistant turns follow in order, and the last message is the query. The prompt is built by
    :func:`qwen_audio.chat.build_context`. So it is token for token what ``qwen_audio.chat`` (and
    the release's ``chat()``) build.
    """
    if not request.messages:
        raise RequestError("messages", "messages: at least one message is needed")
    if request.n != 1:
        raise RequestError("n", f"n: only n=1 is supported, got {request.n}")
    messages = list(request.messages)
    system = DEFAULT_SYSTEM
    if messages[0].role == "system":
        system = _plain_text(messages[0], 0)
    first = int(request.messages[0].role == "system")
    turns = messages[first:]
    recordings: list[Recording] = []
    contents: list = []
    for offset, message in enumerate(turns):
        index = first + offset
        expected = ("user", "assistant")[offset % 2]
        if message.role != expected:
            raise RequestError(
                f"messages[{index}].role",
                f"messages[{index}].role is {message.role!r}; expected "
                f"{expected!r} (user and assistant alternate after an optional system message, and "
                "the last message is the user's)",
            )
        contents.append(
            _user_items(message, index, recordings, max_audio_seconds)
            if expected == "user"
            else _plain_text(message, index)
        )
    if len(contents) % 2 == 0:
        raise RequestError("messages", "messages: the last message must be the user's")
    history = list(zip(contents[:-1:2], contents[1::2]))
    try:
        prompt = build_context(tokenizer, contents[-1], history, system, MAX_WINDOW_SIZE)
    except ValueError as err:  # over the context window
        raise RequestError("messages", f"{err} (the context window)") from None
    return ChatJob(prompt, _chat_config(tokenizer, request), _stop_strings(request.stop)), sum(
        r.waveform.numel() for r in recordings
    ) / SAMPLE_RATE


_CONFIG_PARAMS = {
    "max_new_tokens": "max_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
}


def _chat_config(tokenizer: Tokenizer, request: ChatRequest) -> GenerationConfig:
    options: dict = {}
    max_tokens = request.max_completion_tokens or request.max_tokens
    if max_tokens is not None:
        options["max_new_tokens"] = max_tokens
    if request.temperature is not None and request.temperature < 0:
        raise RequestError(
            "temperature", f"temperature must be >= 0 (0 = greedy), got {request.temperature}"
        )
    if request.temperature == 0:
        options["do_sample"] = False
    else:
        options.update(
            {
                k: getattr(request, k)
                for k in ("temperature", "top_p", "seed")
                if getattr(request, k) is not None
            }
        )
    try:
        return GenerationConfig.chat(tokenizer, **options)
    except ValueError as err:
        field = str(err).split()[0]
        raise RequestError(_CONFIG_PARAMS.get(field, field), str(err)) from None


def _stop_strings(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = (stop,) if isinstance(stop, str) else tuple(stop)
    if len(stops) > 4:
        raise RequestError("stop", f"stop: at most 4 sequences, got {len(stops)}")
    return stops


def transcription_job(
    tokenizer: Tokenizer, form, served: str, max_seconds: float | None = None
) -> tuple[TranscriptionJob, str, bytes]:
    """The job, response format and file bytes of a ``multipart/form-data`` transcription form.

    A file longer than ``max_seconds`` is refused (long-form transcription reads the rest window by
    window). ``prompt`` is accepted for compatibility and not used. The release's transcription
    prompt has no place for it."""
    check_model(str(form.get("model", "")), served)
    if tokenizer.family != "qwen-audio":
        raise RequestError(
            "model",
            f"model {served!r} is a {tokenizer.family} checkpoint; transcriptions are asked "
            "with Qwen-Audio's task tags: use /v1/chat/completions",
        )
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise RequestError("file", "file: an audio file upload is needed")
    extension = os.path.splitext(upload.filename or "")[1].lower().lstrip(".")
    if extension and extension not in (*AUDIO_FORMATS, "oga"):
        raise RequestError(
            "file",
            f"file: unsupported audio format {extension!r} ({upload.filename}); use one of "
            f"{', '.join(AUDIO_FORMATS)}",
        )
    response_format = str(form.get("response_format") or "json")
    if response_format not in RESPONSE_FORMATS:
        raise RequestError(
            "response_format",
            f"response_format {response_format!r} is not one of {', '.join(RESPONSE_FORMATS)}",
        )
    language = form.get("language") or None
    if language is not None and language not in LANGUAGES:
        raise RequestError(
            "language",
            f"language {language!r} is not one of {', '.join(LANGUAGES)} "
            "(leave it out to detect it)",
        )
    granularities = form.getlist("timestamp_granularities[]")
    unknown = [g for g in granularities if g not in GRANULARITIES]
    if unknown:
        raise RequestError(
            "timestamp_granularities[]",
            f"timestamp_granularities[] {unknown[0]!r} is not one of {', '.join(GRANULARITIES)}",
        )
    try:
        temperature = float(form.get("temperature") or 0)
    except ValueError:
        raise RequestError(
            "temperature", f"temperature {form.get('temperature')!r} is not a number"
        ) from None
    if temperature < 0:
        raise RequestError(
            "temperature", f"temperature must be >= 0 (0 = greedy), got {temperature}"
        )
    config = GenerationConfig.base(
        tokenizer, do_sample=temperature > 0, temperature=temperature or 1.0
    )
    data = upload.file.read()
    check_seconds(data, "file", max_seconds, "--max-transcription-seconds")
    job = TranscriptionJob(decode_audio(data, "file"), language, "word" in granularities, config)
    return job, response_format, data


def transcription_body(result: dict, response_format: str, words: bool) -> tuple[str | dict, str]:
    """The response body of a finished transcription (OpenAI's formats) and its media type."""
    text = result["text"]
    if response_format == "text":
        return text, "text/plain"
    segments = [
        {"id": index, "seek": 0, "tokens": [], "temperature": 0.0, **segment}
        for index, segment in enumerate(result["segments"])
    ]
    if response_format in ("srt", "vtt"):
        writer = (WriteSRT if response_format == "srt" else WriteVTT)(".")
        out = io.StringIO()
        writer.write_result({"segments": segments}, out)
        return out.getvalue(), "text/plain"
    body: dict = {"text": text}
    if response_format == "verbose_json":
        body = {
            "task": "transcribe",
            "language": result["language"],
            "duration": result["duration"],
            "text": text,
            "segments": segments,
        }
    if words:
        body["words"] = result["words"]
    return body, "application/json"


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def usage(result: dict) -> dict:
    prompt, completion = result["prompt_tokens"], result["completion_tokens"]
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def chat_completion(request_id: str, model: str, text: str, result: dict) -> dict:
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": result["finish_reason"],
            }
        ],
        "usage": usage(result),
    }


def chat_chunk(
    request_id: str,
    model: str,
    delta: dict,
    finish_reason: str | None = None,
    result: dict | None = None,
) -> dict:
    return {
        "id": request_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        "usage": usage(result) if result else None,
    }


def models_list(model: str) -> dict:
    return {
        "object": "list",
        "data": [{"id": model, "object": "model", "created": 0, "owned_by": "qwen-audio"}],
    }
