"""The one decode thread: every request's bytes come from one `Batch`, stepped in a loop.

Why one thread: the decoder's sequences, caches and the batch's bookkeeping are not
thread-safe, and one forward call over every active stream is also the fast way to serve
many clients (a 10 M model's step costs about the same for 1 or 16 sequences). So exactly one
thread touches the decoder. HTTP handlers (on the asyncio loop) only `submit` and `cancel`
jobs; the worker admits waiting jobs and applies cancellations *between* steps, so requests
join and leave the batch without ever seeing each other's state.

Each job's results go to its `deliver` callback, called on the worker thread with one event
at a time (the server passes a callback that hands them to the asyncio loop):

    ("decision", Decision)    a chat job's answer-or-abstain decision (tilelli.chat.abstain), first
    ("bytes", [GeneratedByte])  bytes that became final in a step
    ("done", (stop_reason, generated_bytes))  last event of a job that ran
    ("error", (status, message))  last event of a job that could not run or failed: HTTP
                              status 400 (the prompt does not fit), 500 (the decoder failed)
                              or 503 (the server is shutting down)

A cancelled job gets no further events; its sequence (and its caches) leave the batch before
the next forward call.

A chat job is decided before it joins the batch (`tilelli.chat.abstain.decide`, the decision
`tilelli chat` makes): when its rule abstains, the reply is the refusal, delivered at once;
otherwise the job decodes as an answer (`answer_sampling`: valid UTF-8, never quoting a refusal).
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tilelli.errors import TilelliError
from tilelli.infer.generate import Batch, Decoder, GeneratedByte, SamplingConfig, Stream

log = logging.getLogger("tilelli.serve")

Event = tuple[str, Any]


class QueueFull(Exception):
    """More requests are waiting for a batch slot than the server accepts (HTTP 429)."""


class ShuttingDown(Exception):
    """The worker is stopping and takes no new jobs (HTTP 503)."""


@dataclass(eq=False)
class Job:
    """One request for the worker: a prompt, its sampling settings and where results go."""

    prompt: bytes
    cfg: SamplingConfig
    deliver: Callable[[Event], None]
    chat: bool = False  # decided first (tilelli.chat.abstain.decide), then answered or refused
    rule: Any = None  # the chat job's AbstainRule, or None (the greedy decision)
    stream: Stream | None = None
    cancelled: bool = False
    finished: bool = False  # its last event was delivered


class DecodeWorker:
    """Owns the decoder and a `Batch`; see the module doc."""

    def __init__(self, decoder: Decoder, max_batch: int = 16, max_queue: int = 64) -> None:
        if max_batch < 1 or max_queue < 0:
            raise TilelliError(f"max_batch={max_batch} must be >= 1 and max_queue={max_queue} >= 0")
        self.decoder = decoder
        self.max_batch, self.max_queue = max_batch, max_queue
        self._batch = Batch(decoder)
        self._cond = threading.Condition()  # guards the three collections below and _stopping
        self._waiting: deque[Job] = deque()
        self._cancels: list[Job] = []
        self._running: set[Job] = set()  # admitted, not finished
        self._by_stream: dict[int, Job] = {}  # id(stream) -> job; the worker thread's own
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="tilelli-decode", daemon=True)

    # --- called from any thread -------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the current step, fail every remaining job ("shutting down"), end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def submit(self, job: Job) -> None:
        """Queue a job; it joins the batch before the next step that has a free slot. Raises
        QueueFull when max_queue jobs already wait beyond the max_batch slots."""
        with self._cond:
            if self._stopping:
                raise ShuttingDown("the server is shutting down")
            if len(self._running) + len(self._waiting) >= self.max_batch + self.max_queue:
                raise QueueFull(f"all {self.max_batch} decode slots are busy and {len(self._waiting)} requests "
                                "are already waiting; retry later")
            self._waiting.append(job)
            self._cond.notify()

    def cancel(self, job: Job) -> None:
        """Drop a job (its client left): waiting, it is forgotten; running, its stream leaves the
        batch before the next forward call. No further events are delivered."""
        with self._cond:
            if job.finished or job.cancelled:
                return
            job.cancelled = True
            if job in self._waiting:
                self._waiting.remove(job)
                job.finished = True
            else:
                self._cancels.append(job)
            self._cond.notify()

    def counts(self) -> dict[str, int]:
        """How many jobs are decoding and waiting now (GET /health shows it)."""
        with self._cond:
            return {"active": len(self._running), "queued": len(self._waiting), "max_batch": self.max_batch,
                    "max_queue": self.max_queue}

    # --- the worker thread ------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._stopping or self._waiting or self._cancels or self._running):
                    self._cond.wait()
                if self._stopping:
                    break
                cancels, self._cancels = self._cancels, []
                admit = []
                while self._waiting and len(self._running) < self.max_batch:
                    job = self._waiting.popleft()
                    self._running.add(job)
                    admit.append(job)
            for job in cancels:
                if job.stream is not None:
                    self._batch.cancel(job.stream)  # its caches are freed here, before the next step
                self._drop(job)
            for job in admit:
                self._admit(job)
            try:
                report = self._batch.step()
            except Exception as e:  # a decoder failure must not leave clients waiting forever
                log.error("decode step failed:\n%s", traceback.format_exc())
                for job in list(self._by_stream.values()):
                    self._finish(job, ("error", (500, f"generation failed: {e}")))
                self._batch = Batch(self.decoder)
                continue
            for stream, released in report:
                job = self._by_stream.get(id(stream))
                if job is None:
                    continue
                if released and not job.cancelled:
                    job.deliver(("bytes", released))
                if stream.done:
                    self._finish(job, ("done", (stream.stop_reason, stream.generated)))
        with self._cond:
            left = list(self._running) + list(self._waiting)
            self._waiting.clear()
        for job in left:
            self._finish(job, ("error", (503, "the server is shutting down")))

    def _admit(self, job: Job) -> None:
        if job.cancelled:
            self._drop(job)
            return
        try:
            cfg = job.cfg
            if job.chat:
                from tilelli.chat.abstain import answer_sampling, decide

                decision = decide(self.decoder, job.rule, job.prompt)
                job.deliver(("decision", decision))
                if decision.abstain:
                    self._refuse(job, decision)
                    return
                cfg = answer_sampling(cfg, job.rule)
            job.stream = self._batch.add(job.prompt, cfg)
        except TilelliError as e:
            self._finish(job, ("error", (400, str(e))))
            return
        except Exception as e:  # a bug here must fail this request, not the thread
            log.error("admitting a request failed:\n%s", traceback.format_exc())
            self._finish(job, ("error", (500, f"generation failed: {e}")))
            return
        self._by_stream[id(job.stream)] = job
        if job.stream.done:  # max_tokens 0: done before any step
            self._finish(job, ("done", (job.stream.stop_reason, 0)))

    def _refuse(self, job: Job, decision: Any) -> None:
        """The rule abstained: the reply is its refusal (cut at max_tokens), never decoded."""
        text = decision.reply.encode("utf-8")
        n = min(len(text), job.cfg.max_new_tokens)
        if n:
            pieces = zip(text[:n], decision.byte_probs[:n], strict=True)
            job.deliver(("bytes", [GeneratedByte(b, p) for b, p in pieces]))
        self._finish(job, ("done", ("stop" if n == len(text) else "max_new_tokens", n)))

    def _drop(self, job: Job) -> None:
        if job.stream is not None:
            self._by_stream.pop(id(job.stream), None)
        with self._cond:
            self._running.discard(job)
            job.finished = True

    def _finish(self, job: Job, event: Event) -> None:
        self._drop(job)
        if not job.cancelled:
            job.deliver(event)
