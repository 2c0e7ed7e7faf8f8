"""Contexts, a bounded queue and cancellation: never two generations on one llama.cpp context.

Each model has ``--parallel`` contexts (slots), each an Engine with its own worker thread.
A request takes an idle slot at once (preferring the one whose KV cache already holds its
prefix), else waits in a FIFO queue of at most ``--queue`` entries, else is refused (503 with
Retry-After). Cancellation is a threading.Event the engine polls once per token: set when
the client disconnects, when a newer infill from the same client supersedes it, or at a
deadline.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from assistant.server.errors import ApiError

if TYPE_CHECKING:
    from assistant.runtime.engine import Engine, Generation
    from assistant.runtime.fim import FimTokens
    from assistant.server.metrics import Metrics
    from assistant.store.resolve import ResolvedModel

Push = Callable[[int, str], None]  # (choice index, text)
Work = Callable[["Engine", Push, Callable[[], bool]], "WorkResult"]


@dataclass
class WorkResult:
    generations: list[Generation]
    cached_tokens: int = 0
    info: dict[str, Any] = field(default_factory=dict)


class Cancelled(Exception):
    """The request was cancelled before it got a context."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class Slot:
    index: int
    engine: Engine
    executor: ThreadPoolExecutor
    busy: bool = False
    last_client: str = ""
    last_prompt: str = ""


def _shared_prefix(a: str, b: str) -> int:
    return len(os.path.commonprefix([a, b]))  # noqa: RUF071 - characters are what we compare


@dataclass
class ModelHandle:
    """One served model: its file, its FIM tokens (None: no infilling) and its contexts."""

    name: str
    resolved: ResolvedModel
    fim: FimTokens | None
    slots: list[Slot]
    queue_limit: int
    waiters: deque[tuple[asyncio.Future[Slot], str, str]] = field(default_factory=deque)

    @property
    def engine(self) -> Engine:
        return self.slots[0].engine

    @property
    def queued(self) -> int:
        return sum(1 for f, _, _ in self.waiters if not f.done())

    @property
    def busy(self) -> int:
        return sum(s.busy for s in self.slots)

    def _pick(self, client: str, prompt: str) -> Slot | None:
        idle = [s for s in self.slots if not s.busy]
        if not idle:
            return None
        return max(idle, key=lambda s: (s.last_client == client, _shared_prefix(s.last_prompt, prompt), -s.index))

    def reserve(self, client: str, prompt: str, loop: asyncio.AbstractEventLoop) -> Slot | asyncio.Future[Slot]:
        """An idle slot now, a future for one, or ApiError 503 when the queue is full."""
        slot = self._pick(client, prompt) if not self.queued else None
        if slot is not None:
            slot.busy = True
            return slot
        if self.queued >= self.queue_limit:
            raise ApiError(
                503,
                f"the server is busy: {len(self.slots)} generation(s) running and {self.queued} waiting",
                code="queue_full",
                headers={"Retry-After": "1"},
            )
        fut: asyncio.Future[Slot] = loop.create_future()
        self.waiters.append((fut, client, prompt))
        return fut

    def release(self, slot: Slot) -> None:
        while self.waiters:
            fut, _, _ = self.waiters.popleft()
            if not fut.done():
                fut.set_result(slot)  # stays busy: handed straight to the next request
                return
        slot.busy = False

    def close(self) -> None:
        for s in self.slots:
            s.executor.shutdown(wait=True)
            s.engine.close()


@dataclass
class Ticket:
    """One generation in flight; its text arrives on ``texts`` (None ends it)."""

    id: int
    model: ModelHandle
    client: str
    texts: asyncio.Queue[tuple[int, str] | None]
    result: asyncio.Future[WorkResult]
    event: threading.Event = field(default_factory=threading.Event)
    reason: str | None = None
    waiting: asyncio.Future[Slot] | None = None
    slot_index: int = -1

    def cancel(self, reason: str) -> None:
        if self.result.done() or self.event.is_set():
            return
        self.reason = reason
        self.event.set()
        if self.waiting is not None and not self.waiting.done():
            self.waiting.cancel()

    async def stream(self):
        """(index, text) pieces until the generation ends."""
        while True:
            item = await self.texts.get()
            if item is None:
                return
            yield item


class Scheduler:
    def __init__(self, metrics: Metrics, supersede: bool = True):
        self.metrics = metrics
        self.supersede = supersede
        self._latest_infill: dict[str, Ticket] = {}
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(
        self,
        model: ModelHandle,
        work: Work,
        *,
        client: str,
        prompt_key: str,
        infill: bool = False,
        deadline_s: float | None = None,
    ) -> Ticket:
        """Start ``work`` on a context of ``model`` (now or after the queue); raises ApiError 503 when full."""
        loop = asyncio.get_running_loop()
        if infill and self.supersede:
            prev = self._latest_infill.get(client)
            if prev is not None:
                prev.cancel("superseded")
        try:
            got = model.reserve(client, prompt_key, loop)
        except ApiError:
            self.metrics.rejected[model.name] += 1
            raise
        ticket = Ticket(next(self._ids), model, client, asyncio.Queue(), loop.create_future())
        ticket.result.add_done_callback(lambda f: f.exception() if not f.cancelled() else None)
        if isinstance(got, asyncio.Future):
            ticket.waiting = got
        if infill:
            self._latest_infill[client] = ticket
        deadline = time.monotonic() + deadline_s if deadline_s else None
        task = loop.create_task(self._run(ticket, got, work, prompt_key, deadline))
        self._tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)
        return ticket

    async def _run(
        self, t: Ticket, got: Slot | asyncio.Future[Slot], work: Work, prompt_key: str, deadline: float | None
    ) -> None:
        loop = asyncio.get_running_loop()
        name = t.model.name
        t0 = time.perf_counter()
        try:
            slot = got if isinstance(got, Slot) else await got
        except asyncio.CancelledError:
            self._finish(t, exc=Cancelled(t.reason or "cancelled"))
            return
        self.metrics.queue_seconds.observe((name,), time.perf_counter() - t0)
        t.slot_index = slot.index
        if t.event.is_set():
            t.model.release(slot)
            self._finish(t, exc=Cancelled(t.reason or "cancelled"))
            return
        slot.last_client, slot.last_prompt = t.client, prompt_key

        def push(index: int, text: str) -> None:
            loop.call_soon_threadsafe(t.texts.put_nowait, (index, text))

        def cancelled() -> bool:
            if t.event.is_set():
                return True
            if deadline is not None and time.monotonic() > deadline:
                t.reason = t.reason or "deadline"
                return True
            return False

        try:
            result = await loop.run_in_executor(slot.executor, work, slot.engine, push, cancelled)
        except BaseException as e:
            t.model.release(slot)
            self._finish(t, exc=e if isinstance(e, Exception) else RuntimeError(str(e)))
            return
        t.model.release(slot)
        self._record(name, result, t)
        self._finish(t, result=result)

    def _record(self, name: str, result: WorkResult, t: Ticket) -> None:
        m = self.metrics
        m.cached_tokens[name] += result.cached_tokens
        for g in result.generations:
            m.prompt_tokens[name] += g.timings.prompt_tokens
            m.generated_tokens[name] += g.timings.generated_tokens
            m.generations[(name, g.finish_reason)] += 1
            if g.timings.generated_tokens or g.finish_reason != "cancelled":
                m.ttft_seconds.observe((name,), g.timings.ttft_s)
            if g.finish_reason == "cancelled":
                m.cancelled[t.reason or "cancelled"] += 1

    def _finish(self, t: Ticket, result: WorkResult | None = None, exc: BaseException | None = None) -> None:
        if isinstance(exc, Cancelled):
            self.metrics.cancelled[exc.reason] += 1
        if self._latest_infill.get(t.client) is t:
            del self._latest_infill[t.client]
        if not t.result.done():
            if exc is not None:
                t.result.set_exception(exc)
            else:
                assert result is not None
                t.result.set_result(result)
        t.texts.put_nowait(None)


def make_slots(engines: list[Engine]) -> list[Slot]:
    return [Slot(i, e, ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ctx{i}")) for i, e in enumerate(engines)]
