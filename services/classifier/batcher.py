"""Dynamic micro-batching: requests queue up, a single worker takes what is there (under load waiting at most
max_wait_ms for a batch to fill up to max_batch) and scores it in one onnxruntime run off the event loop.
A small run (a short prompt alone, as when traffic is light) is scored on the event loop instead."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from prometheus_client import Gauge, Histogram

BATCH_SIZE = Histogram(
    "llmrouter_classifier_batch_size", "prompts per inference run", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256)
)
INFERENCE_SECONDS = Histogram(
    "llmrouter_classifier_inference_seconds",
    "duration of one inference run (tokenise + onnxruntime)",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
QUEUE_DEPTH = Gauge("llmrouter_classifier_queue_depth", "prompts waiting for a batch")

Predict = Callable[[Sequence[str]], np.ndarray]


class MicroBatcher:
    def __init__(self, predict: Predict, max_batch: int, max_wait_ms: float, inline_chars: int = 0) -> None:
        """`inline_chars` > 0: a run of at most that many characters in all is scored on the event loop. Its
        inference (~0.1 ms for a short prompt) costs less than the hand-off to the inference thread and back;
        longer runs would hold the event loop too long."""
        self._predict = predict
        self._max_batch = max_batch
        self._max_wait = max_wait_ms / 1000
        self._inline_chars = inline_chars
        self._queue: asyncio.Queue[tuple[str, asyncio.Future[np.ndarray]]] = asyncio.Queue()
        # One inference at a time: onnxruntime already uses every thread it was given for one run.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="classifier-infer")
        self._worker: asyncio.Task[None] | None = None
        self._last_size = 0

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._worker:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        while not self._queue.empty():
            _, future = self._queue.get_nowait()
            future.cancel()
        self._executor.shutdown(wait=True)

    async def score(self, prompts: Sequence[str]) -> np.ndarray:
        loop = asyncio.get_running_loop()
        futures = []
        for prompt in prompts:
            future: asyncio.Future[np.ndarray] = loop.create_future()
            self._queue.put_nowait((prompt, future))
            futures.append(future)
        QUEUE_DEPTH.set(self._queue.qsize())
        if len(futures) == 1:  # the usual request: no gather and stack (~15 us)
            return (await futures[0])[np.newaxis]
        return np.stack(await asyncio.gather(*futures))

    async def _next_batch(self) -> list[tuple[str, asyncio.Future[np.ndarray]]]:
        batch = [await self._queue.get()]
        while len(batch) < self._max_batch and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        # Waiting for a batch to fill only pays under concurrent load (the last run held more than one
        # prompt); a lone request is scored at once instead of paying max_wait_ms for nothing.
        if self._last_size <= 1 or len(batch) >= self._max_batch:
            return batch
        deadline = time.monotonic() + self._max_wait
        while len(batch) < self._max_batch:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        while True:
            await self._score_batch(await self._next_batch())

    async def _score_batch(self, batch: list[tuple[str, asyncio.Future[np.ndarray]]]) -> None:
        QUEUE_DEPTH.set(self._queue.qsize())
        self._last_size = len(batch)
        live = [(p, f) for p, f in batch if not f.done()]  # callers that gave up are not scored
        if not live:
            return
        prompts = [p for p, _ in live]
        started = time.perf_counter()
        try:
            if sum(map(len, prompts)) <= self._inline_chars:
                quality = self._predict(prompts)
            else:
                quality = await asyncio.get_running_loop().run_in_executor(self._executor, self._predict, prompts)
        except Exception as exc:  # fail this batch's callers, keep serving the next ones
            for _, future in live:
                if not future.done():
                    future.set_exception(exc)
            return
        INFERENCE_SECONDS.observe(time.perf_counter() - started)
        BATCH_SIZE.observe(len(live))
        for row, (_, future) in zip(quality, live, strict=True):
            if not future.done():
                future.set_result(row)
