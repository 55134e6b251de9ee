"""Ordered prefetch: a pure step on worker threads ahead of a stateful, in-order step.

The aggregator's work per message splits into a pure part (signature checks, Avro decoding, zstd,
reading quantization levels, and for the chunk that completes a chunked payload the join and the
payload's digest and signature: :func:`aggregator.service.prepare`) and a stateful part that must
see messages in consumption order (reassembly, replay checks, the engine). :class:`OrderedPrefetch`
runs the pure part of the next few messages on a thread pool while the stateful step (the app runs
it on its engine thread) handles the current one, and hands results over strictly in the order the
items were put in. Much of the pure part runs in C code that releases the GIL (``hashlib``, zstd,
numpy), so more cores help until the GIL is the limit: the event loop's fetch holds it most of the
time (``docs/bench-aggregate-history.md``, "Where the time goes" and "On 16 cores").

Back-pressure: :meth:`OrderedPrefetch.put` waits while ``depth`` items are in flight, so memory
stays bounded by ``depth`` messages. An exception raised by the stateful step stops the pipeline
and is raised again from the next :meth:`~OrderedPrefetch.put` or :meth:`~OrderedPrefetch.join`;
nothing is skipped silently.

:class:`GroupCommit` is the rule by which the app ends a group of handled messages that share
one checkpoint before they are acked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from types import TracebackType
from typing import Generic, TypeVar

from fedsynth.errors import ConfigError

__all__ = ["GroupCommit", "OrderedPrefetch"]

T = TypeVar("T")
R = TypeVar("R")


class OrderedPrefetch(Generic[T, R]):
    """``handle(item, prepare(item))`` for every item put, in order, with ``prepare`` run ahead.

    Example::

        async with OrderedPrefetch(prepare, handle, pool, depth=8) as pipe:
            async for item in source:
                await pipe.put(item)
        # leaving the block waits until every item put has been handled
    """

    def __init__(
        self,
        prepare: Callable[[T], R],
        handle: Callable[[T, R], Awaitable[None]],
        executor: Executor,
        depth: int,
    ) -> None:
        """Configure the pipeline.

        Args:
            prepare: Pure, thread-safe function of one item.
            handle: Coroutine function called with each item and its prepared result, in order.
            executor: Where ``prepare`` runs (a thread pool).
            depth: Most items prepared or queued ahead of ``handle`` (>= 1).

        Raises:
            ConfigError: ``depth`` < 1.
        """
        if depth < 1:
            raise ConfigError(f"prefetch depth must be >= 1, got {depth}")
        self._prepare = prepare
        self._handle = handle
        self._executor = executor
        self._queue: asyncio.Queue[tuple[T, asyncio.Future[R]]] = asyncio.Queue(depth)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> OrderedPrefetch[T, R]:
        self._task = asyncio.get_running_loop().create_task(self._drain())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc is None:
                await self.join()
        finally:
            task, self._task = self._task, None
            if task is not None and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    @property
    def backlog(self) -> int:
        """Items put but not yet taken by the handler (0: the handler has caught up)."""
        return self._queue.qsize()

    async def put(self, item: T) -> None:
        """Start preparing ``item`` and queue it; waits while the pipeline is full."""
        self._check()
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, self._prepare, item)
        put = asyncio.ensure_future(self._queue.put((item, future)))
        assert self._task is not None
        done, _ = await asyncio.wait({put, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if put not in done:  # the drain task stopped while we waited for room
            put.cancel()
            future.cancel()
            self._check()

    async def join(self) -> None:
        """Wait until every item put so far has been handled."""
        self._check()
        assert self._task is not None
        joined = asyncio.ensure_future(self._queue.join())
        done, _ = await asyncio.wait({joined, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if joined not in done:
            joined.cancel()
            self._check()

    def _check(self) -> None:
        if self._task is None:
            raise RuntimeError("OrderedPrefetch is used outside its 'async with' block")
        if self._task.done():
            exc = self._task.exception() if not self._task.cancelled() else None
            if exc is not None:
                raise exc
            raise RuntimeError("the prefetch pipeline has stopped")

    async def _drain(self) -> None:
        while True:
            item, future = await self._queue.get()
            try:
                result = await future
                await self._handle(item, result)
            finally:
                self._queue.task_done()


class GroupCommit:
    """When a group of messages handled back to back under one checkpoint ends (group commit).

    A group ends, to be checkpointed and then acked, once ``every`` of its messages changed the
    state a checkpoint holds, once it holds ``limit`` messages (changed or not: each unacked one
    keeps its record in memory), when no message waits to be handled, or with a message whose
    handling wrote a checkpoint already (a new version, written ahead of its records: that
    checkpoint covers the whole group, so acking it then costs at most a small one with the
    outbox cleared). Messages that change nothing (a chunk of a payload not yet whole, a refused
    record) so do not each cost a share of a checkpoint, and a secure cohort's group runs from
    one version to the next: an open cohort's checkpoint writes its whole running sum, and at a
    version none is open.

    Example::

        group = GroupCommit(every=16, limit=64)
        if group.ends(changed, backlog, checkpointed): ...  # checkpoint, then ack the group
    """

    def __init__(self, every: int, limit: int) -> None:
        """Args: every: changes of state per group; limit: messages per group (>= every).

        Raises:
            ConfigError: ``every`` < 1 or ``limit`` < ``every``.
        """
        if every < 1 or limit < every:
            raise ConfigError(f"a group needs 1 <= every <= limit: every={every}, limit={limit}")
        self.every, self.limit = every, limit
        self.messages = self.changes = 0

    def ends(self, changed: bool, backlog: int, checkpointed: bool = False) -> bool:
        """Count one handled message; True when its group ends with it (a new one begins).

        Args:
            changed: The message changed the state a checkpoint holds.
            backlog: Messages waiting to be handled after it.
            checkpointed: Handling it wrote a checkpoint (of everything handled so far).
        """
        self.messages += 1
        self.changes += changed
        if (
            checkpointed
            or self.changes >= self.every
            or self.messages >= self.limit
            or backlog == 0
        ):
            self.messages = self.changes = 0
            return True
        return False
