"""A Serve replica's engine thread: requests go in through a queue, decode steps come out per request.

The thread owns the engine's continuous-batching scheduler (serving.scheduler). Between two decode
steps it takes every job that arrived, drops the rows of jobs whose clients went away, and steps
once; each job's share of the step's tokens goes back to its handler on the event loop through an
asyncio queue. So a request starts at the next step whatever is running, and leaves the step it is
done: no request waits for a batch to form or for a longer one to finish (what `@serve.batch`
static batches did).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace

from serving.batch import SequenceUpdate
from serving.engine import Engine
from serving.protocol import SamplingParams

_END = object()


@dataclass
class Job:
    """One request's prompts, as the engine thread sees them."""

    prompts: list[list[int]]  # token ids
    params: SamplingParams  # params.n samples per prompt
    client: str  # the caller's key_id (serving/auth.py): whose quota its tokens are charged to
    cancelled: threading.Event = field(default_factory=threading.Event)  # set by its handler

    @property
    def sequences(self) -> int:
        return len(self.prompts) * self.params.n


@dataclass
class _Entry:
    job: Job
    out: asyncio.Queue
    first_index: int  # the scheduler's prompt index of the job's prompt 0
    remaining: int


class EngineLoop:
    """Runs `engine` on a daemon thread; `updates(job)` is a job's stream of per-step updates."""

    def __init__(self, engine: Engine, on_step: Callable[[int, int], None] | None = None):
        self.engine = engine
        self.scheduler = engine.scheduler()
        self.on_step = on_step  # (tokens generated, sequences running), called on the event loop
        self._inbox: queue.SimpleQueue[tuple[Job, asyncio.Queue, asyncio.AbstractEventLoop]] = (
            queue.SimpleQueue()
        )
        self._wake = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self._thread.start()

    async def updates(self, job: Job) -> AsyncIterator[list[SequenceUpdate]]:
        """The job's updates per engine step (prompt_index local to the job) until all finished.

        Raises what the engine raised. A consumer that stops early must set job.cancelled; the
        thread then drops its rows before its next step.
        """
        out: asyncio.Queue = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._inbox.put((job, out, self._loop))
        self._wake.set()
        while True:
            item = await out.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def _run(self) -> None:
        entries: dict[int, _Entry] = {}  # by first_index
        owner: dict[int, _Entry] = {}  # scheduler prompt index -> its job's entry
        next_index = 0
        while True:
            if not self.scheduler.busy:
                self._wake.wait()
            self._wake.clear()
            try:
                next_index = self._admit(entries, owner, next_index)
                self._step(entries, owner)
            except BaseException as err:  # the engine's state is unknown: every job in it fails, saying why
                self.scheduler = self.engine.scheduler()
                for e in list(entries.values()):
                    self._close(e, entries, owner, err)
                self._report(0)

    def _admit(self, entries: dict, owner: dict, next_index: int) -> int:
        while not self._inbox.empty():
            job, out, loop = self._inbox.get()
            try:
                seqs = self.engine.sequences(job.prompts, job.params, first_index=next_index)
            except Exception as err:  # a request the engine refuses fails alone
                loop.call_soon_threadsafe(out.put_nowait, err)
                continue
            entry = _Entry(job, out, next_index, job.sequences)
            entries[next_index] = entry
            for p in range(len(job.prompts)):
                owner[next_index + p] = entry
            next_index += len(job.prompts)
            self.scheduler.add(seqs)
        return next_index

    def _step(self, entries: dict, owner: dict) -> None:
        gone = {first for first, e in entries.items() if e.job.cancelled.is_set()}  # one snapshot
        if gone:
            self.scheduler.cancel(lambda i: owner[i].first_index in gone)
            for first in gone:
                self._close(entries[first], entries, owner, _END)
            self._report(0)
        if not self.scheduler.busy:
            return
        updates = self.scheduler.step()
        per_job: dict[int, list[SequenceUpdate]] = {}
        for u in updates:
            e = owner[u.prompt_index]
            local = u.prompt_index - e.first_index
            done = replace(u.completion, prompt_index=local) if u.completion else None
            per_job.setdefault(e.first_index, []).append(replace(u, prompt_index=local, completion=done))
            e.remaining -= u.completion is not None
        for first, job_updates in per_job.items():
            e = entries[first]
            self._send(e, job_updates)
            if e.remaining == 0:
                self._close(e, entries, owner, _END)
        self._report(sum(len(u.token_ids) for u in updates))

    def _report(self, tokens: int) -> None:
        if self.on_step is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self.on_step, tokens, self.scheduler.running)

    def _send(self, e: _Entry, item) -> None:
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(e.out.put_nowait, item)

    def _close(self, e: _Entry, entries: dict, owner: dict, last) -> None:
        entries.pop(e.first_index, None)
        for p in range(len(e.job.prompts)):
            owner.pop(e.first_index + p, None)
        self._send(e, last)
