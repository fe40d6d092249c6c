"""What the server refuses before an endpoint, and how it stops without leaving a process behind.

:class:`GuardMiddleware` is ASGI middleware in front of every route, so it acts before a request
reaches an endpoint. It checks an API key and answers 401 with OpenAI's error body. ``/health``
stays open. It enforces a request-body limit with 413. The 413 comes from the ``Content-Length``
header, or as soon as a body sent without one passes the limit, never after reading it whole. Once
the server is stopping, it answers 503 to new requests.

:func:`stop_on_sigterm` makes SIGTERM stop new requests and let the ones in flight finish (up to a
timeout). It then ends LitServe the way it ends on Ctrl-C, which stops its inference worker and its
manager process. The server then exits 0.

:func:`die_with_parent` has the kernel kill a child process when the process that started it dies,
even by SIGKILL (``prctl(PR_SET_PDEATHSIG)``). LitServe's forked manager and its spawned inference
worker use it.
"""

from __future__ import annotations

import ctypes
import hmac
import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("qwen_audio.serve")

OPEN_PATHS = ("/health",)  # answered without the API key: load balancers and orchestrators probe it
API_KEY_VARIABLE = "QWEN_AUDIO_API_KEY"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@dataclass(frozen=True)
class Limits:
    """What ``python -m qwen_audio.serve`` accepts (its options of the same names)."""

    api_key: str | None = None
    max_request_mb: float | None = 25.0  # OpenAI's own limit on audio uploads
    max_audio_seconds: float | None = 30.0  # chat: the encoder's window
    max_transcription_seconds: float | None = 3600.0  # long-form transcription, window by window
    shutdown_timeout: float = 30.0  # seconds SIGTERM waits for the requests in flight


def error_body(message: str, kind: str, code: str | None = None) -> bytes:
    """OpenAI's error body: ``{"error": {"message", "type", "param", "code"}}``."""
    return json.dumps(
        {"error": {"message": message, "type": kind, "param": None, "code": code}}
    ).encode()


async def send_error(
    send: Send, status: int, body: bytes, headers: tuple[tuple[bytes, bytes], ...] = ()
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyTooLarge(Exception):
    """A request body passed the limit while it was being read."""


class Drain:
    """The requests in flight, and whether the server has begun to stop."""

    def __init__(self) -> None:
        self.stopping = False
        self.in_flight = 0
        self._lock = threading.Lock()

    def add(self, change: int) -> None:
        with self._lock:
            self.in_flight += change

    def wait(self, timeout: float) -> int:
        """Wait until no request is in flight or ``timeout`` seconds pass.

        Returns the number of requests still in flight.
        """
        deadline = time.monotonic() + timeout
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.in_flight


class GuardMiddleware:
    """API key, body limit and draining, for every HTTP route (see the module's docstring)."""

    def __init__(
        self, app: ASGIApp, *, api_key: str | None, max_request_bytes: int | None, drain: Drain
    ) -> None:
        self.app, self.api_key, self.max_request_bytes, self.drain = (
            app,
            api_key,
            max_request_bytes,
            drain,
        )

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), self.api_key.encode()
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.drain.stopping:
            await send_error(
                send,
                503,
                error_body("the server is shutting down", "server_error"),
                ((b"retry-after", b"1"),),
            )
            return
        headers = dict(scope["headers"])
        if (
            self.api_key is not None
            and scope["path"] not in OPEN_PATHS
            and not self._authorized(headers)
        ):
            body = error_body(
                "Incorrect API key provided: pass it as 'Authorization: Bearer KEY' (the server's "
                f"--api-key or {API_KEY_VARIABLE})",
                "invalid_request_error",
                "invalid_api_key",
            )
            await send_error(send, 401, body, ((b"www-authenticate", b"Bearer"),))
            return
        limit = self.max_request_bytes
        too_large = error_body(
            f"the request body is larger than the server's limit of {limit} bytes "
            "(--max-request-mb)",
            "invalid_request_error",
            "request_too_large",
        )
        length = headers.get(b"content-length", b"")
        if limit is not None and length.isdigit() and int(length) > limit:
            await send_error(send, 413, too_large)  # the body is never read
            return
        started = False
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if limit is not None and received > limit:
                raise BodyTooLarge
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        self.drain.add(1)
        try:
            await self.app(scope, limited_receive, tracked_send)
        except BodyTooLarge:
            if not started:
                await send_error(send, 413, too_large)
        finally:
            self.drain.add(-1)


def stop_on_sigterm(drain: Drain, timeout: float) -> None:
    """Install a SIGTERM handler that drains the server, then raises KeyboardInterrupt.

    SIGTERM is handled in the main thread, where LitServe waits. The handler stops new requests and
    waits up to ``timeout`` seconds for those in flight. It then raises KeyboardInterrupt, on which
    LitServe stops its processes.
    """

    def stop(signum, frame) -> None:
        drain.stopping = True
        logger.info(
            "SIGTERM: refusing new requests, finishing %d in flight (up to %.0f s)",
            drain.in_flight,
            timeout,
        )
        left = drain.wait(timeout)
        if left:
            logger.warning(
                "SIGTERM: %d requests still in flight after %.0f s; stopping anyway", left, timeout
            )
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)


def die_with_parent(parent: int) -> None:
    """Have the kernel SIGKILL this process when the thread that started it ends.

    This uses ``PR_SET_PDEATHSIG``. The process also ends at once if ``parent`` is already gone,
    since it may die before this runs. This works on Linux only and does nothing elsewhere.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return
    if not hasattr(libc, "prctl") or libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return
    if os.getppid() != parent:
        os._exit(1)


def forked_children_die_with_this_process() -> None:
    """Make every process this one forks later (LitServe's manager) die with it.

    See :func:`die_with_parent`. The processes that those fork in turn are not covered.
    """
    main, forking = os.getpid(), [0]

    def before() -> None:
        forking[0] = os.getpid()

    def in_child() -> None:
        if forking[0] == main:
            die_with_parent(main)

    os.register_at_fork(before=before, after_in_child=in_child)
