"""The serving engine: one background thread runs the generation loop's decode steps for every request.

Continuous batching: requests that arrive while others generate join the running batch between decode steps
(prefilled alone into a free cache row), and leave it the moment they finish or are cancelled, each with its
own sampling settings, seed, stop ids and max_new_tokens. The step machinery is `generate.DecodeBatch`, the
same one `generate()` runs on, so a greedy answer equals the request's answer served alone.

Callbacks run on the engine thread: keep them short (hand the token to another thread or an event loop).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from llmscratch.generate import DecodeBatch, Request, SamplingConfig, check_fits, check_prompts
from llmscratch.model.base import can_pack_linear_weights, pack_linear_weights

log = logging.getLogger(__name__)

DEFAULT_MAX_LEN = 2048  # slots per row when max_len is None (at most the model's context length)


class QueueFull(Exception):
    """Too many requests wait already; try again in `retry_after` seconds (an HTTP 429 with Retry-After)."""

    def __init__(self, queued: int, retry_after: int):
        super().__init__(f"{queued} requests are waiting already; retry in {retry_after} s")
        self.queued, self.retry_after = queued, retry_after


class EngineStopped(Exception):
    """The engine is stopping or stopped and takes no new requests (an HTTP 503)."""


@dataclass
class EngineStats:
    """A snapshot of the engine's load and counters."""

    active: int  # rows generating now
    queued: int  # requests waiting for a row
    max_batch: int
    max_queue: int
    max_len: int  # slots per row (prompt + new tokens)
    completed: int  # requests finished (any reason)
    generated_tokens: int  # tokens handed to on_token, all requests
    steps: int  # decode steps run
    running: bool  # the engine thread is alive


class Handle:
    """A submitted request: cancel it, wait for it, read its finish reason."""

    def __init__(self, engine: Engine, prompt: list[int], cfg: SamplingConfig, on_token, on_done):
        self._engine, self.prompt, self.cfg = engine, prompt, cfg
        self._on_token, self._on_done = on_token, on_done
        self._cancelled = False
        self._finished = threading.Event()
        self.request: Request | None = None  # set when it joins the batch
        self.tokens: list[int] = []  # the ids sent to on_token so far
        self.finish_reason: str | None = None
        self.submitted = time.perf_counter()

    def cancel(self) -> None:
        """Stop generating for this request: its row is freed at the next step, on_done("cancelled") follows."""
        self._cancelled = True
        self._engine._wake()

    @property
    def done(self) -> bool:
        return self._finished.is_set()

    def wait(self, timeout: float | None = None) -> str | None:
        """Block until on_done ran (or `timeout` seconds); the finish reason, or None on timeout."""
        self._finished.wait(timeout)
        return self.finish_reason


class Engine:
    """Continuous batching over at most `max_batch` rows, with at most `max_queue` requests waiting.

    max_len: slots per row, prompt + new tokens (None: the model's context length, at most 2048); the KV cache
    of max_batch x max_len slots is allocated once. pack_weights: on a CPU, give the model's Linear layers
    prepacked weights for batched steps (`model.base.pack_linear_weights`, in place: a batched step takes
    about half the time, at the cost of a second copy of the weights).
    """

    def __init__(
        self, model, max_batch: int = 8, max_queue: int = 64, max_len: int | None = None, pack_weights: bool = True
    ):
        if max_batch < 1 or max_queue < 0:
            raise ValueError(f"max_batch must be >= 1 and max_queue >= 0, got {max_batch} and {max_queue}")
        ctx = model.config.context_length
        self.model = model.eval()
        self.max_batch, self.max_queue = max_batch, max_queue
        self.max_len = min(DEFAULT_MAX_LEN, ctx) if max_len is None else max_len
        if self.max_len > ctx:
            raise ValueError(f"max_len {self.max_len} exceeds the model's context length {ctx}")
        if pack_weights and can_pack_linear_weights(model):
            pack_linear_weights(model, max(max_batch, 8))
        self.batch = DecodeBatch(model, max_batch, self.max_len)
        self._queue: deque[Handle] = deque()
        self._rows: dict[int, Handle] = {}  # id(request) -> handle, for requests in the batch
        self._joining: list[Handle] = []  # taken off the queue, being prefilled (in neither of the above yet)
        self._cond = threading.Condition()
        self._accepting, self._drain, self._stop = True, True, False
        self._thread: threading.Thread | None = None
        self._completed = self._generated = self._steps = 0
        self._seconds_per_request = 1.0  # running mean, for Retry-After

    # ---------------------------------------------------------------------------------- the caller's side

    def start(self) -> None:
        """Start the background thread that runs decode steps."""
        if self._thread is not None:
            raise RuntimeError("the engine was started already")
        self._thread = threading.Thread(target=self._run, name="llmscratch-engine", daemon=True)
        self._thread.start()

    def stop(self, drain: bool = True, timeout: float | None = None) -> None:
        """Take no new requests; finish those running and waiting (`drain`), or cancel them; end the thread."""
        with self._cond:
            self._accepting, self._drain, self._stop = False, drain, True
            self._cond.notify_all()
            if self._thread is None:  # never started: nothing will run what waits
                while self._queue:
                    self._finish(self._queue.popleft(), "cancelled")
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(
        self,
        prompt_ids: Sequence[int],
        cfg: SamplingConfig,
        on_token: Callable[[int], None],
        on_done: Callable[[str], None],
    ) -> Handle:
        """Queue a request. on_token(id) for each new id (stop ids are not sent), then on_done(reason) once:
        "stop" (a stop id), "length" (max_new_tokens), "cancelled", or "error" (the model failed).

        Raises UserError for bad settings or a prompt that does not fit, QueueFull when every row is busy and
        max_queue requests wait, EngineStopped after stop().
        """
        cfg.validate()
        check_prompts(self.model, [prompt_ids])
        check_fits(self.model, len(prompt_ids), cfg.max_new_tokens, self.max_len)
        handle = Handle(self, list(prompt_ids), cfg, on_token, on_done)
        with self._cond:
            if not self._accepting:
                raise EngineStopped("the server is shutting down and takes no new requests")
            if self.in_flight() >= self.max_queue + self.max_batch:  # every row busy, max_queue waiting
                raise QueueFull(len(self._queue), self._retry_after())
            self._queue.append(handle)
            self._cond.notify_all()
        return handle

    def in_flight(self) -> int:
        """Requests accepted and not finished: waiting, being prefilled, or generating (call under the lock)."""
        return len(self._queue) + len(self._joining) + len(self._rows)

    def stats(self) -> EngineStats:
        with self._cond:
            return EngineStats(
                active=len(self._rows), queued=len(self._queue), max_batch=self.max_batch,
                max_queue=self.max_queue, max_len=self.max_len, completed=self._completed,
                generated_tokens=self._generated, steps=self._steps,
                running=self._thread is not None and self._thread.is_alive(),
            )

    def _retry_after(self) -> int:
        """Seconds until a queue place is likely free: waiting requests / rows x a request's mean time."""
        return max(1, math.ceil(len(self._queue) / self.max_batch * self._seconds_per_request))

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # ---------------------------------------------------------------------------------- the engine thread

    def _run(self) -> None:
        try:
            with torch.inference_mode():
                while (admitted := self._next_work()) is not None:
                    self._cancel_rows()
                    self._join(admitted)
                    if self.batch.active:
                        self._step()
        except Exception:  # a bug: end every request rather than leave its client waiting
            log.exception("the engine thread failed")
            with self._cond:
                self._accepting = False
                for h in [*self._queue, *self._joining, *self._rows.values()]:
                    self._finish(h, "error")
                self._queue.clear()
                self._rows.clear()
                self._joining = []

    def _next_work(self) -> list[Handle] | None:
        """Wait for something to do; take the waiting requests that fit the free rows. None: time to exit."""
        with self._cond:
            while True:
                for h in [h for h in self._queue if h._cancelled]:  # cancelled while waiting
                    self._queue.remove(h)
                    self._finish(h, "cancelled")
                if self._stop and not self._drain:
                    self._cancel_everything()
                    return None
                if self._queue or self._rows:
                    n = min(self.batch.free, len(self._queue))
                    self._joining = [self._queue.popleft() for _ in range(n)]
                    return list(self._joining)
                if self._stop:
                    return None
                self._cond.wait()

    def _cancel_everything(self) -> None:
        while self._queue:
            self._finish(self._queue.popleft(), "cancelled")
        for h in list(self._rows.values()):
            h._cancelled = True
        self._cancel_rows()

    def _cancel_rows(self) -> None:
        for h in [h for h in self._rows.values() if h._cancelled]:
            self.batch.leave(h.request, "cancelled")
            self._settle(h)

    def _join(self, handles: list[Handle]) -> None:
        """Prefill the admitted requests (those of one prompt length together) and send their first tokens."""
        for h in [h for h in handles if h._cancelled]:
            self._finish(h, "cancelled")
        handles = [h for h in handles if not h._cancelled]
        try:
            reqs = self.batch.join_many([h.prompt for h in handles], [h.cfg for h in handles])
        except Exception:
            log.exception("prefill failed")
            for h in handles:
                self._finish(h, "error")
            with self._cond:
                self._joining = []
            return
        with self._cond:
            self._joining = []
            for h, req in zip(handles, reqs):
                h.request = req
                if req.row >= 0:
                    self._rows[id(req)] = h
        for h in handles:
            self._settle(h)

    def _step(self) -> None:
        try:
            reqs = self.batch.step()
        except Exception:
            log.exception("decode step failed; its requests end with 'error'")
            for h in list(self._rows.values()):
                self.batch.leave(h.request, "error")
                self._settle(h)
            return
        self._steps += 1
        for req in reqs:
            self._settle(self._rows[id(req)])

    def _settle(self, handle: Handle) -> None:
        """Hand the request's newest token to on_token; if it finished, drop its row and call on_done."""
        req = handle.request
        if req.tokens and req.finish not in ("stop", "cancelled", "error") and not handle._cancelled:
            try:
                handle.tokens.append(req.tokens[-1])
                handle._on_token(req.tokens[-1])
                self._generated += 1
            except Exception:  # a broken consumer (a closed stream): stop generating for it
                log.exception("on_token failed; request cancelled")
                self.batch.leave(req, "cancelled")
        if req.finish is not None:
            with self._cond:
                self._rows.pop(id(req), None)
            self._finish(handle, req.finish)

    def _finish(self, handle: Handle, reason: str) -> None:
        if handle.done:
            return
        handle.finish_reason = reason
        seconds = time.perf_counter() - handle.submitted
        self._seconds_per_request += 0.1 * (seconds - self._seconds_per_request)
        self._completed += 1
        try:
            handle._on_done(reason)
        except Exception:
            log.exception("on_done failed")
        handle._finished.set()


class SerialEngine(Engine):
    """The same interface with batching off: one request generates at a time, the others wait (for bench serve).

    Takes Engine's arguments; max_batch is ignored (always 1).
    """

    def __init__(
        self, model, max_batch: int = 1, max_queue: int = 64, max_len: int | None = None, pack_weights: bool = True
    ):
        super().__init__(model, max_batch=1, max_queue=max_queue, max_len=max_len, pack_weights=pack_weights)
