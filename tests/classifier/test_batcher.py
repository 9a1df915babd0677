"""Adaptive micro-batching: a lone prompt is scored at once (no batching wait), prompts arriving together
are scored together, and each caller gets its own prompt's row."""

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
        self.lock = threading.Lock()

    def predict(self, prompts: Sequence[str]) -> np.ndarray:
        with self.lock:
            self.runs.append(len(prompts))
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
