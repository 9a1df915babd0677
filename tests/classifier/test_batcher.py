"""Adaptive micro-batching: a lone prompt is scored at once (no batching wait), prompts arriving together
are scored together, and each caller gets its own prompt's row. A run of few characters is scored on the
event loop itself, a longer one on the inference thread."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import numpy as np

from services.classifier.batcher import MicroBatcher


class SlowModel:
    """Scores a prompt as its length, taking `seconds` per run (as an inference would); records run sizes."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.runs: list[int] = []
        self.threads: list[str] = []  # the thread each run was scored on
        self.lock = threading.Lock()

    def predict(self, prompts: Sequence[str]) -> np.ndarray:
        with self.lock:
            self.runs.append(len(prompts))
            self.threads.append(threading.current_thread().name)
        time.sleep(self.seconds)
        return np.array([[float(len(p))] for p in prompts], dtype=np.float32)


async def test_a_lone_prompt_does_not_wait_for_a_batch() -> None:
    model = SlowModel(0.0)
    batcher = MicroBatcher(model.predict, max_batch=32, max_wait_ms=5_000)
    batcher.start()
    try:
        for prompt in ("a", "bb", "ccc"):  # one at a time, as at 1 request in flight
            row = await asyncio.wait_for(batcher.score([prompt]), timeout=2.5)  # far under the 5 s wait
            assert row[0][0] == len(prompt)
    finally:
        await batcher.close()
    assert model.runs == [1, 1, 1]


async def test_prompts_arriving_together_are_batched_and_kept_apart() -> None:
    model = SlowModel(0.02)
    batcher = MicroBatcher(model.predict, max_batch=16, max_wait_ms=2)
    batcher.start()
    try:
        prompts = ["x" * (i + 1) for i in range(64)]
        rows = await asyncio.gather(*(batcher.score([p]) for p in prompts))
    finally:
        await batcher.close()
    assert [row[0][0] for row in rows] == [len(p) for p in prompts]
    assert sum(model.runs) == 64 and max(model.runs) <= 16
    assert len(model.runs) <= 64 // 4  # prompts that queued during a run went together into the next


async def test_small_runs_are_scored_on_the_event_loop_and_larger_ones_on_the_inference_thread() -> None:
    model = SlowModel(0.0)
    batcher = MicroBatcher(model.predict, max_batch=8, max_wait_ms=2, inline_chars=10)
    batcher.start()
    try:
        small = await batcher.score(["abc", "defg"])  # one run of 7 characters
        large = await batcher.score(["x" * 11])  # over the bound
        together = await asyncio.gather(*(batcher.score([c * 4]) for c in "wxyz"))  # 4 small requests, 16 characters
    finally:
        await batcher.close()
    assert small[:, 0].tolist() == [3, 4] and large[:, 0].tolist() == [11]
    assert [row[0][0] for row in together] == [4, 4, 4, 4]
    assert model.runs == [2, 1, 4]  # requests arriving together are still batched, whatever the bound
    assert model.threads[0] == threading.current_thread().name
    assert all(name.startswith("classifier-infer") for name in model.threads[1:])
