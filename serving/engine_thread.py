"""Driving a blocking iterator (the engine's decode steps) from asyncio without blocking the loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Executor
from typing import TypeVar

T = TypeVar("T")
_END = object()


async def iterate_in_thread(items: Iterator[T], executor: Executor) -> AsyncIterator[T]:
    """Yield `items`, advanced on `executor`'s thread; its exception, if any, re-raised here.

    The thread runs ahead of the consumer (the items are small), so it never waits on the loop.
    A consumer that stops early must make the iterator end (the engine: cancel its prompts);
    this function cannot interrupt a thread.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    def drive() -> None:
        try:
            for item in items:
                loop.call_soon_threadsafe(queue.put_nowait, (item, None))
        except BaseException as err:  # handed to the consumer, which raises it
            loop.call_soon_threadsafe(queue.put_nowait, (_END, err))
        else:
            loop.call_soon_threadsafe(queue.put_nowait, (_END, None))

    done = loop.run_in_executor(executor, drive)
    while True:
        item, err = await queue.get()
        if item is _END:
            await done
            if err is not None:
                raise err
            return
        yield item
