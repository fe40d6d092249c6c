"""The inference worker's loop: requests in between decoding steps, events out after each.

This is continuous batching.

LitServe 0.2.19's ``ContinuousBatchingLoop`` is not used. It calls ``add_request`` from a background
thread while ``step`` runs in another, so a prefill would race a decoding step over the same KV
cache. It spins without sleeping when idle. It fails every running request when one raises. It has
no way to cancel a request whose client left.

This loop runs everything on one thread. It takes the requests that arrived, blocking only when
idle. It hands them to the :class:`~qwen_audio.serve.scheduler.Scheduler`, runs one step and sends
each job's events.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from litserve.loops.base import LitLoop
from litserve.utils import LitAPIStatus, LoopResponseType

logger = logging.getLogger("qwen_audio.serve")
STREAMING = LoopResponseType.STREAMING


@dataclass(frozen=True)
class Cancel:
    """Put on the request queue when the client of request ``uid`` left.

    Its generation stops, and its slots free.
    """

    uid: str


class SchedulerLoop(LitLoop):
    """Feeds the LitAPI's ``scheduler`` (made in its ``setup``) from LitServe's request queue."""

    def run(
        self,
        lit_api,
        device,
        worker_id,
        request_queue,
        transport,
        workers_setup_status,
        callback_runner,
    ):
        scheduler = lit_api.scheduler
        queues: dict[str, int] = {}  # uid -> the response queue of its API server
        while True:
            block = not scheduler.has_work()
            while (
                item := self.get_request(request_queue, block=block, timeout=1.0 if block else None)
            ) is not None:
                block = False
                response_queue_id, uid, _, job = item
                if isinstance(job, Cancel):
                    scheduler.cancel(job.uid)
                    queues.pop(job.uid, None)
                    continue
                try:
                    scheduler.add(uid, job)
                    queues[uid] = response_queue_id
                except Exception as err:  # a bad job fails alone
                    logger.exception("request %s could not be scheduled", uid)
                    self.put_error_response(transport, response_queue_id, uid, err, STREAMING)
            if not scheduler.has_work():
                continue
            try:
                events = scheduler.step()
            except Exception as err:
                logger.exception("a decoding step failed; failing the requests it held")
                for uid, response_queue_id in queues.items():
                    scheduler.cancel(uid)
                    self.put_error_response(transport, response_queue_id, uid, err, STREAMING)
                queues.clear()
                continue
            for uid, event in events:
                response_queue_id = queues[uid]
                self.put_response(
                    transport, response_queue_id, uid, json.dumps(event), LitAPIStatus.OK, STREAMING
                )
                if event.get("done"):
                    self.put_response(
                        transport,
                        response_queue_id,
                        uid,
                        "",
                        LitAPIStatus.FINISH_STREAMING,
                        STREAMING,
                    )
                    del queues[uid]
