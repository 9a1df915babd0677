"""A large body is parsed without a garbage collection pass. A pass holds the GIL, and with it the edge's event loop
(every request of the process), for as long as it walks the objects it counts: a body of millions of empty arrays made
json.loads, in the parser's thread, set off pass after pass over all of them, ~1 s held for 8 MB where a body of as
many zeros is parsed in ~0.13 s (benchmarks/item_stall.py). The bounds on a body's objects and arrays and the items in
them (llmrouter/json_bounds.py) now refuse such a body before its parse; lifted here, the parse is the one
watched.

What is watched is how many objects the parser thread's passes walk, counted as each pass starts, not how long they
took: a pass's time on the clock is the machine's load as much as its work (a pass over a few hundred young objects,
the thread descheduled under load, took past the bound once), and the work is what the GIL is held for."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from services.edge import openai_api
from services.edge.off_loop import OFF_LOOP_BYTES
from services.edge.settings import EdgeSettings
from tests.edge.test_http_protocol import nowhere
from tests.integration.conftest import free_port, start_edge

# 8.1 MB, under EDGE_MAX_BODY_BYTES (8 MiB): 2.7 million lists, refused (a list where an object is due).
LISTS = 2_700_000
EMPTY_LISTS = b'{"messages": [{"role": "user", "content": "x"}], "metadata": [' + b",".join([b"[]"] * LISTS) + b"]}"


@pytest.fixture
def parser_passes() -> Iterator[list[int]]:
    """How many objects each garbage collection pass run in the edge's body parser thread walked: those of the
    generations it collects, as it starts."""
    passes: list[int] = []

    def watch(phase: str, info: dict[str, Any]) -> None:
        # services/edge/off_loop.py: PARSER's threads
        if phase == "start" and threading.current_thread().name.startswith("edge-body-parse"):
            passes.append(sum(len(gc.get_objects(older)) for older in range(info["generation"] + 1)))

    gc.callbacks.append(watch)
    try:
        yield passes
    finally:
        gc.callbacks.remove(watch)


async def test_a_body_of_millions_of_empty_arrays_is_parsed_without_a_collection_pass(
    parser_passes: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert len(EMPTY_LISTS) > OFF_LOOP_BYTES
    monkeypatch.setattr(openai_api, "MAX_JSON_CONTAINERS", len(EMPTY_LISTS))  # the edge is served in this process
    monkeypatch.setattr(openai_api, "MAX_JSON_ITEMS", len(EMPTY_LISTS))
    server, task, channel = await start_edge(EdgeSettings(port=free_port(), router_addr=nowhere()))
    try:
        async with httpx.AsyncClient(timeout=120) as http:
            reply = await http.post(
                f"http://127.0.0.1:{server.config.port}/v1/chat/completions",
                content=EMPTY_LISTS,
                headers={"content-type": "application/json"},
            )
    finally:
        server.should_exit = True
        await task
        await channel.close()
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == "metadata"
    # The collector back on, a pass or two over what is left (a few hundred young objects; at worst the process's
    # own, far fewer than the body's lists): none over the body's values. Collected as it was parsed, the passes walked
    # over ten times as many objects as the body has lists.
    walked = sum(parser_passes)
    assert walked < LISTS, f"{len(parser_passes)} collection passes in the parser's thread walked {walked} objects"
