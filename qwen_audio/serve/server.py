"""The LitServe server: one inference worker with continuous batching, behind OpenAI endpoints.

The worker decodes chat and transcription jobs with continuous batching (:mod:`.scheduler`, run by
:mod:`.loop`). The OpenAI endpoints validate each request before it is queued (:mod:`.openai_api`).
A bad request thus gets its HTTP 400, streamed or not, and never reaches the model. Past
``max_slots + max_queue`` requests in flight, a request gets a 503 with ``Retry-After``. A client
that leaves cancels its generation, which frees its slots at once.

The endpoints live in a LitServe spec (as LitServe's own ``OpenAISpec`` does) rather than in
``OpenAISpec`` itself. ``OpenAISpec``'s request model admits only wav and mp3 ``input_audio`` and
has no ``seed``. It always reports ``finish_reason`` "stop" and answers bad requests with 422 or a
500 in the stream. It offers no transcription route. Both routes feed the same request queue, so
chat and transcription requests batch together on one model.
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

from qwen_audio.audio import SAMPLE_RATE
from qwen_audio.checkpoint import load_model, load_tokenizer
from qwen_audio.longform import window_bounds, window_prompts
from qwen_audio.serve import openai_api
from qwen_audio.serve.guards import (
    Drain,
    GuardMiddleware,
    Limits,
    die_with_parent,
    forked_children_die_with_this_process,
    stop_on_sigterm,
)
from qwen_audio.serve.loop import Cancel, SchedulerLoop
from qwen_audio.serve.openai_api import RequestError
from qwen_audio.serve.scheduler import ChatJob, Job, Scheduler, TranscriptionJob

logger = logging.getLogger("qwen_audio.serve")


class WorkerError(RuntimeError):
    """The inference worker failed on a request."""


class OpenAIAudioSpec(LitSpec):
    """``/v1/chat/completions`` (text and ``input_audio`` parts, streaming),
    ``/v1/audio/transcriptions`` (multipart) and ``/v1/models``, on the queue of the LitAPI this
    spec belongs to."""

    def __init__(
        self,
        checkpoint: str,
        model_name: str,
        max_model_len: int,
        max_in_flight: int,
        limits: Limits,
    ) -> None:
        super().__init__()
        self.api_path = "/v1/chat/completions"
        self.checkpoint, self.model_name, self.limits = checkpoint, model_name, limits
        self.max_model_len, self.max_in_flight = max_model_len, max_in_flight
        self.in_flight = 0
        self._tokenizer = (
            None  # loaded in the API process on first use, never pickled to the worker
        )

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
            job, seconds = await run_in_threadpool(
                openai_api.chat_job, self.tokenizer, chat, self.limits.max_audio_seconds
            )
            self._check_length(job)
        except RequestError as err:
            return JSONResponse(err.body(), status_code=400)
        events = await self._submit(job)
        if events is None:
            return _busy()
        request_id = openai_api.completion_id()
        if chat.stream:
            return StreamingResponse(
                self._stream(request_id, events, seconds, started), media_type="text/event-stream"
            )
        try:
            text, result = await _collect(events, request)
        except WorkerError as err:
            return _server_error(err)
        if result is None:  # the client left
            return Response(status_code=499)
        self._log(request_id, seconds, result, started)
        return JSONResponse(openai_api.chat_completion(request_id, self.model_name, text, result))

    async def transcriptions(self, request: Request) -> Response:
        started = time.monotonic()
        try:
            form = await request.form()
            job, response_format, _ = await run_in_threadpool(
                openai_api.transcription_job,
                self.tokenizer,
                form,
                self.model_name,
                self.limits.max_transcription_seconds,
            )
            await run_in_threadpool(self._check_windows, job)
        except RequestError as err:
            return JSONResponse(err.body(), status_code=400)
        events = await self._submit(job)
        if events is None:
            return _busy()
        request_id = f"transcription-{uuid.uuid4().hex[:24]}"
        try:
            _, result = await _collect(events, request)
        except WorkerError as err:
            return _server_error(err)
        if result is None:
            return Response(status_code=499)
        self._log(request_id, result["duration"], result, started)
        body, media_type = openai_api.transcription_body(result, response_format, job.timestamps)
        if isinstance(body, dict):
            return JSONResponse(body)
        return PlainTextResponse(body, media_type=media_type)

    def _check_length(self, job: ChatJob) -> None:
        """A 400 when the prompt and its new tokens overflow the context.

        It names ``messages`` or ``max_tokens``.
        """
        prompt, new = len(job.prompt.ids), job.config.max_new_tokens
        if prompt + new > self.max_model_len:
            param = "messages" if prompt >= self.max_model_len else "max_tokens"
            raise RequestError(
                param,
                f"{param}: this model's context holds {self.max_model_len} tokens; the "
                f"request asks for {prompt + new} ({prompt} in the messages, {new} to generate)",
            )

    def _check_windows(self, job: TranscriptionJob) -> None:
        """A 400 naming ``file`` when the prompt of the audio's longest window leaves no room in the
        context for its transcript. (A transcript that outgrows the room ends with the context.)"""
        start, stop = max(window_bounds(job.waveform), key=lambda bounds: bounds[1] - bounds[0])
        (prompt,) = window_prompts(
            self.tokenizer,
            [job.waveform[start:stop]],
            language=job.language or "en",
            timestamps=job.timestamps,
        )
        if len(prompt.ids) >= self.max_model_len:
            raise RequestError(
                "file",
                f"file: a {(stop - start) / SAMPLE_RATE:.1f} s window of this audio takes "
                f"{len(prompt.ids)} prompt tokens; the model's context holds {self.max_model_len}, "
                "which leaves no room for its transcript (start the server with a larger "
                "--max-model-len)",
            )

    async def _submit(self, job: Job) -> AsyncIterator[dict] | None:
        """Queue ``job`` and return its events (:meth:`_events`).

        Returns None when ``max_in_flight`` requests are in flight already. Check and count are one
        step, so no request slips in between.
        """
        if self.in_flight >= self.max_in_flight:
            return None
        events = self._events(job)
        await anext(events)  # runs it up to the queueing: no await between the check and the count
        return events

    async def _events(self, job: Job) -> AsyncIterator[dict]:
        """Queue ``job`` for the worker, yield None once queued, then yield its events.

        The events are those of :meth:`.scheduler.Scheduler.step`. Leaving before the last one (the
        client left) cancels the job in the worker.
        """
        uid = uuid.uuid4()
        queue, available = deque(), asyncio.Event()
        self.response_buffer[uid] = ResponseBufferItem(response_queue=queue, event=available)
        self.request_queue.put((self.response_queue_id, uid, time.monotonic(), job))
        self.in_flight += 1
        finished = False
        try:
            yield None
            async for data, status in self.data_streamer(queue, available, send_status=True):
                if status == LitAPIStatus.ERROR:
                    finished = True
                    raise WorkerError(f"the inference worker failed: {data!r}")
                event = json.loads(data) if data else {}
                finished = bool(event.get("done"))
                if event:
                    yield event
        finally:
            self.in_flight -= 1
            self.response_buffer.pop(uid, None)
            if not finished:
                self.request_queue.put(
                    (self.response_queue_id, uuid.uuid4(), time.monotonic(), Cancel(uid))
                )

    async def _stream(
        self, request_id: str, events: AsyncIterator[dict], seconds: float, started: float
    ) -> AsyncIterator[str]:
        """Server-sent events in OpenAI's chunk format: the role, the text pieces, the finish reason
        with the usage, then ``[DONE]``."""
        name = self.model_name
        try:
            role = {"role": "assistant", "content": ""}
            yield _sse(openai_api.chat_chunk(request_id, name, role))
            async for event in events:
                if event.get("text"):
                    yield _sse(openai_api.chat_chunk(request_id, name, {"content": event["text"]}))
                if event.get("done"):
                    self._log(request_id, seconds, event, started)
                    yield _sse(
                        openai_api.chat_chunk(request_id, name, {}, event["finish_reason"], event)
                    )
        except WorkerError as err:
            yield _sse(
                {
                    "error": {
                        "message": str(err),
                        "type": "server_error",
                        "param": None,
                        "code": None,
                    }
                }
            )
        finally:
            await events.aclose()  # a client that left cancels its job now, not when collected
        yield "data: [DONE]\n\n"

    @staticmethod
    def _log(request_id: str, seconds: float, result: dict, started: float) -> None:
        logger.info(
            "%s audio=%.2fs prompt_tokens=%d completion_tokens=%d batch=%d latency=%.3fs",
            request_id,
            seconds,
            result["prompt_tokens"],
            result["completion_tokens"],
            result["batch"],
            time.monotonic() - started,
        )


async def _json(request: Request) -> object:
    try:
        return await request.json()
    except ValueError as err:
        raise RequestError(None, f"the request body is not valid JSON: {err}") from None


async def _collect(events: AsyncIterator[dict], request: Request) -> tuple[str, dict | None]:
    """The joined text of a job's events and its last event.

    The event is None if the client left first, which cancels the job.
    """

    async def collect() -> tuple[str, dict]:
        pieces, result = [], {}
        async for event in events:
            pieces.append(event.get("text", ""))
            if event.get("done"):
                result = event
        return "".join(pieces), result

    task = asyncio.ensure_future(collect())
    while not (await asyncio.wait({task}, timeout=0.5))[0]:
        if await request.is_disconnected():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await events.aclose()
            return "", None
    return task.result()


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _busy() -> JSONResponse:
    body = {
        "error": {
            "message": "the server is at capacity; retry shortly",
            "type": "server_busy",
            "param": None,
            "code": None,
        }
    }
    return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})


def _server_error(err: Exception) -> JSONResponse:
    body = {"error": {"message": str(err), "type": "server_error", "param": None, "code": None}}
    return JSONResponse(body, status_code=500)


class QwenAudioAPI(ls.LitAPI):
    """The inference worker: loads the model once, then decodes every job in one continuous batch.

    :class:`.scheduler.Scheduler` runs the batch, fed by :class:`.loop.SchedulerLoop`. On CUDA the
    decoding step's graphs are captured at load.
    """

    def __init__(
        self,
        checkpoint: str,
        *,
        dtype: torch.dtype | None,
        max_slots: int,
        max_model_len: int,
        max_queue: int,
        limits: Limits,
    ) -> None:
        model_name = os.path.basename(os.path.normpath(checkpoint))
        spec = OpenAIAudioSpec(checkpoint, model_name, max_model_len, max_slots + max_queue, limits)
        super().__init__(spec=spec, loop=SchedulerLoop())
        self.checkpoint, self.dtype = checkpoint, dtype
        self.max_slots, self.max_model_len = max_slots, max_model_len
        self.server_pid = os.getpid()

    def setup(self, device: str) -> None:
        die_with_parent(self.server_pid)  # this worker is a spawned process of the server's
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(name)s %(message)s"
        )  # a spawned process
        model, tokenizer = load_model(self.checkpoint, device=device, dtype=self.dtype)
        self.scheduler = Scheduler(
            model, tokenizer, max_slots=self.max_slots, max_model_len=self.max_model_len
        )
        if self.scheduler.engine.device.type == "cuda":
            self.scheduler.engine.capture()

    def predict(self, jobs):
        raise NotImplementedError(
            "jobs are decoded by the scheduler loop, never one predict call at a time"
        )


def serve(
    checkpoint: str,
    *,
    host: str,
    port: int,
    device: str,
    dtype: torch.dtype | None,
    max_slots: int,
    max_model_len: int,
    max_queue: int,
    limits: Limits | None = None,
) -> None:
    """Load ``checkpoint`` in one inference worker on ``device`` and answer on ``host:port``.

    It answers until SIGTERM (or Ctrl-C) stops it (:mod:`.guards`). It then exits with no process of
    it left. The exit status is 0 unless LitServe failed.
    """
    limits = limits or Limits()
    api = QwenAudioAPI(
        checkpoint,
        dtype=dtype,
        max_slots=max_slots,
        max_model_len=max_model_len,
        max_queue=max_queue,
        limits=limits,
    )
    drain = Drain()
    max_bytes = None if limits.max_request_mb is None else round(limits.max_request_mb * 2**20)
    guard = {"api_key": limits.api_key, "max_request_bytes": max_bytes, "drain": drain}
    server = ls.LitServer(
        api,
        accelerator=device,
        devices=1,
        workers_per_device=1,
        timeout=False,
        middlewares=[(GuardMiddleware, guard)],
    )
    forked_children_die_with_this_process()
    stop_on_sigterm(drain, limits.shutdown_timeout)
    code = 0
    try:
        server.run(
            host=host,
            port=port,
            generate_client_file=False,
            api_server_worker_type="thread",
            log_level="warning",
        )
    except Exception:
        logger.exception("the server stopped on an error")
        code = 1
    # LitServe has stopped its worker and manager; its API server thread would keep the process
    # alive
    logging.shutdown()
    os._exit(code)
