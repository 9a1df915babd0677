"""The caller's identity around a streaming handler closed from another task (a cancelled stream)."""

from __future__ import annotations

import asyncio

import pytest

from llmrouter.auth import ANONYMOUS, acting_as, current_identity


async def test_a_stream_closed_from_another_task_closes_cleanly() -> None:
    async def handler():
        with acting_as(ANONYMOUS):
            yield current_identity()
            yield current_identity()

    stream = handler()

    async def first() -> object:
        return await stream.__anext__()

    assert await asyncio.create_task(first()) is ANONYMOUS  # set in that task's context
    await asyncio.create_task(stream.aclose())  # closed from another one, as grpc does on cancel
    with pytest.raises(LookupError):
        current_identity()  # nothing leaked into this context
