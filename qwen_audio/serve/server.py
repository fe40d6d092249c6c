"""The LitServe server: one inference worker batching chat and transcription jobs (:mod:`.engine`), and the
OpenAI endpoints that validate each request before it is queued (:mod:`.openai_api`), so that a bad request gets
its HTTP 400, streamed or not, and never reaches the model.

The endpoints live in a LitServe spec (as LitServe's own ``OpenAISpec`` does) rather than in ``OpenAISpec``
itself: its request model admits only wav and mp3 ``input_audio``, has no ``seed``, always reports
``finish_reason`` "stop", answers bad requests with 422 or a 500 in the stream, and offers no transcription route.
Both routes feed the same request queue, so chat and transcription requests batch together on one model.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator

import litserve as ls
import torch
from fastapi import Request
from fastapi.responses import (
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from litserve.specs.base import LitSpec
from litserve.utils import LitAPIStatus, ResponseBufferItem
from starlette.concurrency import run_in_threadpool

from qwen_audio.checkpoint import load_model, load_tokenizer
from qwen_audio.serve import openai_api
from qwen_audio.serve.engine import Job, run_batch
from qwen_audio.serve.guards import (
    Drain,
    GuardMiddleware,
    Limits,
    die_with_parent,
    forked_children_die_with_this_process,
    stop_on_sigterm,
)
from qwen_audio.serve.openai_api import RequestError

logger = logging.getLogger("qwen_audio.serve")


class WorkerError(RuntimeError):
    """The inference worker failed on a request."""


class OpenAIAudioSpec(LitSpec):
    """``/v1/chat/completions`` (text and ``input_audio`` parts, streaming), ``/v1/audio/transcriptions``
    (multipart) and ``/v1/models``, on the queue of the LitAPI this spec belongs to."""

    def __init__(self, checkpoint: str, model_name: str, limits: Limits) -> None:
        super().__init__()
        self.api_path = "/v1/chat/completions"
        self.checkpoint, self.model_name, self.limits = checkpoint, model_name, limits
        self._tokenizer = None  # loaded in the API process on first use, never pickled to the worker

    @property
    def stream(self) -> bool:
        return True

    def __getstate__(self) -> dict:
        return {**super().__getstate__(), "_tokenizer": None}

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.checkpoint)
        return self._tokenizer

    def pre_setup(self, lit_api: ls.LitAPI) -> None:
        self.add_endpoint("/v1/chat/completions", self.chat_completions, ["POST"])
        self.add_endpoint("/v1/audio/transcriptions", self.transcriptions, ["POST"])
        self.add_endpoint("/v1/models", self.models, ["GET"])

    def decode_request(self, request: Job, context_kwargs: dict | None = None) -> Job:
        return request

    def encode_response(self, output, context_kwargs: dict | None = None):
        yield from output

    async def models(self) -> JSONResponse:
        return JSONResponse(openai_api.models_list(self.model_name))

    async def chat_completions(self, request: Request) -> Response:
        started = time.monotonic()
        try:
            chat = openai_api.parse_chat_request(await _json(request))
            openai_api.check_model(chat.model, self.model_name)
            job, seconds = await run_in_threadpool(openai_api.chat_job, self.tokenizer, chat,
                                                   self.limits.max_audio_seconds)
        except RequestError as err:
            return JSONResponse(err.body(), status_code=400)
        request_id = openai_api.completion_id()
        events = self._events(job)
        if chat.stream:
            return StreamingResponse(self._stream(request_id, events, seconds, started),
                                     media_type="text/event-stream")
        try:
            text, result = await _collect(events)
        except WorkerError as err:
            return _server_error(err)
        self._log(request_id, seconds, result, started)
        return JSONResponse(openai_api.chat_completion(request_id, self.model_name, text, result))

    async def transcriptions(self, request: Request) -> Response:
        started = time.monotonic()
        try:
            form = await request.form()
            job, response_format, _ = await run_in_threadpool(openai_api.transcription_job, self.tokenizer, form,
                                                              self.model_name,
                                                              self.limits.max_transcription_seconds)
        except RequestError as err:
            return JSONResponse(err.body(), status_code=400)
        request_id = f"transcription-{uuid.uuid4().hex[:24]}"
        try:
            _, result = await _collect(self._events(job))
        except WorkerError as err:
            return _server_error(err)
        self._log(request_id, result["duration"], result, started)
        body, media_type = openai_api.transcription_body(result, response_format, job.timestamps)
        if isinstance(body, dict):
            return JSONResponse(body)
        return PlainTextResponse(body, media_type=media_type)

    async def _events(self, job: Job) -> AsyncIterator[dict]:
        """Queue ``job`` for the worker and yield its events (see :func:`.engine.run_batch`)."""
        uid = uuid.uuid4()
        queue, available = deque(), asyncio.Event()
        self.response_buffer[uid] = ResponseBufferItem(response_queue=queue, event=available)
        self.request_queue.put((self.response_queue_id, uid, time.monotonic(), job))
        try:
            async for data, status in self.data_streamer(queue, available, send_status=True):
                if status == LitAPIStatus.ERROR:
                    raise WorkerError(f"the inference worker failed: {data!r}")
                event = json.loads(data) if data else {}
                if event:
                    yield event
        finally:
            self.response_buffer.pop(uid, None)

    async def _stream(self, request_id: str, events: AsyncIterator[dict], seconds: float,
                      started: float) -> AsyncIterator[str]:
        """Server-sent events in OpenAI's chunk format: the role, the text pieces, the finish reason with the
        usage, then ``[DONE]``."""
        name = self.model_name
        yield _sse(openai_api.chat_chunk(request_id, name, {"role": "assistant", "content": ""}))
        try:
            async for event in events:
                if event.get("text"):
                    yield _sse(openai_api.chat_chunk(request_id, name, {"content": event["text"]}))
                if event.get("done"):
                    self._log(request_id, seconds, event, started)
                    yield _sse(openai_api.chat_chunk(request_id, name, {}, event["finish_reason"], event))
        except WorkerError as err:
            yield _sse({"error": {"message": str(err), "type": "server_error", "param": None, "code": None}})
        yield "data: [DONE]\n\n"

    @staticmethod
    def _log(request_id: str, seconds: float, result: dict, started: float) -> None:
        logger.info("%s audio=%.2fs prompt_tokens=%d completion_tokens=%d batch=%d latency=%.3fs", request_id,
                    seconds, result["prompt_tokens"], result["completion_tokens"], result["batch"],
                    time.monotonic() - started)


async def _json(request: Request) -> object:
    try:
        return await request.json()
    except ValueError as err:
        raise RequestError(None, f"the request body is not valid JSON: {err}") from None


async def _collect(events: AsyncIterator[dict]) -> tuple[str, dict]:
    """The joined text of a job's events and its last event."""
    pieces, result = [], {}
    async for event in events:
        pieces.append(event.get("text", ""))
        if event.get("done"):
            result = event
    return "".join(pieces), result


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _server_error(err: Exception) -> JSONResponse:
    body = {"error": {"message": str(err), "type": "server_error", "param": None, "code": None}}
    return JSONResponse(body, status_code=500)


class QwenAudioAPI(ls.LitAPI):
    """The inference worker: loads the model once, then decodes each dynamic batch with :func:`run_batch`."""

    def __init__(self, checkpoint: str, *, dtype: torch.dtype | None, max_batch_size: int,
                 batch_timeout: float, limits: Limits) -> None:
        model_name = os.path.basename(os.path.normpath(checkpoint))
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout,
                         spec=OpenAIAudioSpec(checkpoint, model_name, limits))
        self.checkpoint, self.dtype = checkpoint, dtype
        self.server_pid = os.getpid()

    def setup(self, device: str) -> None:
        die_with_parent(self.server_pid)  # this worker is a spawned process of the server's
        self.model, self.tokenizer = load_model(self.checkpoint, device=device, dtype=self.dtype)

    def predict(self, jobs):
        batched = self.max_batch_size > 1  # LitServe hands a list only when batching
        for events in run_batch(self.model, self.tokenizer, jobs if batched else [jobs]):
            yield events if batched else events[0]


def serve(checkpoint: str, *, host: str, port: int, device: str, dtype: torch.dtype | None, max_batch_size: int,
          batch_timeout: float, limits: Limits | None = None) -> None:
    """Load ``checkpoint`` in one inference worker on ``device`` and answer on ``host:port`` until SIGTERM (or
    Ctrl-C) stops it (:mod:`.guards`); then exit, 0 unless LitServe failed, with no process of it left."""
    limits = limits or Limits()
    api = QwenAudioAPI(checkpoint, dtype=dtype, max_batch_size=max_batch_size, batch_timeout=batch_timeout,
                       limits=limits)
    drain = Drain()
    max_bytes = None if limits.max_request_mb is None else round(limits.max_request_mb * 2**20)
    guard = {"api_key": limits.api_key, "max_request_bytes": max_bytes, "drain": drain}
    server = ls.LitServer(api, accelerator=device, devices=1, workers_per_device=1, timeout=False,
                          middlewares=[(GuardMiddleware, guard)])
    forked_children_die_with_this_process()
    stop_on_sigterm(drain, limits.shutdown_timeout)
    code = 0
    try:
        server.run(host=host, port=port, generate_client_file=False, api_server_worker_type="thread",
                   log_level="warning")
    except Exception:
        logger.exception("the server stopped on an error")
        code = 1
    # LitServe has stopped its worker and manager; its API server thread would keep the process alive
    logging.shutdown()
    os._exit(code)
