"""Opportunistic micro-batching of concurrent prediction requests (no added wait).

Building features for a request costs about the same for 1 or 100 patients: the polars query behind the
ONE feature function has ~1000 expressions and planning it dominates on small frames. So while a batch is
being scored in the thread pool, requests that arrive queue up, and the next batch takes them all (up to
``max_instances`` instances). A request that arrives to an idle server is scored at once, alone: single-
request latency is unchanged, while under concurrency one feature build serves many requests.

Runs on the event loop (no locks): ``submit`` is a coroutine, the scoring itself runs in the executor.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Generic, TypeVar

Req = TypeVar("Req")
Res = TypeVar("Res")


class _Queue(Generic[Req, Res]):
    """Requests waiting on one event loop, and that loop's drain task."""

    def __init__(self) -> None:
        self.pending: deque[tuple[Req, asyncio.Future[Res]]] = deque()
        self.worker: asyncio.Task[None] | None = None


class MicroBatcher(Generic[Req, Res]):
    """Coalesce requests submitted while a batch is in flight; at most one batch runs at a time.

    ``score_many(requests)`` returns one result per request; a result that is an exception is raised
    to that request's caller only. ``size(request)`` counts its instances for the ``max_instances`` cap
    (a single request larger than the cap still runs, alone). Batches run on ``executor`` (the loop's
    default when None).
    """

    def __init__(
        self,
        score_many: Callable[[list[Req]], Sequence[Res | BaseException]],
        size: Callable[[Req], int],
        max_instances: int,
        executor: Executor | None = None,
    ) -> None:
        self._score_many = score_many
        self._executor = executor
        self._size = size
        self._max = max(1, max_instances)
        # Per event loop (the server has one; in-process test clients may use one per request): futures
        # and the drain task must live on the loop that awaits them.
        self._queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Queue[Req, Res]] = (
            weakref.WeakKeyDictionary()
        )
        self.batches = 0  # batches scored so far (diagnostics and tests)

    async def submit(self, request: Req) -> Res:
        """Score ``request`` (alone if the scorer is idle, else with the requests queued meanwhile)."""
        loop = asyncio.get_running_loop()
        q = self._queues.get(loop)
        if q is None:
            q = self._queues[loop] = _Queue()
        fut: asyncio.Future[Res] = loop.create_future()
        q.pending.append((request, fut))
        if q.worker is None or q.worker.done():
            q.worker = loop.create_task(self._drain(q))
        return await fut

    def _take(self, pending: deque[tuple[Req, asyncio.Future[Res]]]) -> list[tuple[Req, asyncio.Future[Res]]]:
        batch: list[tuple[Req, asyncio.Future[Res]]] = []
        n = 0
        while pending:
            req, fut = pending[0]
            if fut.done():  # the caller went away (cancelled): skip its work
                pending.popleft()
                continue
            k = self._size(req)
            if batch and n + k > self._max:
                break
            pending.popleft()
            batch.append((req, fut))
            n += k
        return batch

    async def _drain(self, q: _Queue[Req, Res]) -> None:
        loop = asyncio.get_running_loop()
        while q.pending:
            batch = self._take(q.pending)
            if not batch:
                continue
            try:
                results = list(
                    await loop.run_in_executor(self._executor, self._score_many, [r for r, _ in batch])
                )
                if len(results) != len(batch):
                    raise RuntimeError(f"batch scorer returned {len(results)} results for {len(batch)}")
            except Exception as exc:  # a failure of the batch as a whole fails each of its requests
                results = [exc] * len(batch)
            self.batches += 1
            for (_, fut), res in zip(batch, results, strict=True):
                if fut.done():
                    continue
                if isinstance(res, BaseException):
                    fut.set_exception(res)
                else:
                    fut.set_result(res)
