"""A large body is parsed without a garbage collection pass. A pass holds the GIL, and with it the edge's event loop
(every request of the process), for as long as it walks the objects it counts: a body of millions of empty arrays made
json.loads, in the parser's thread, set off pass after pass over all of them, ~1 s held for 8 MB where a body of as
many zeros is parsed in ~0.13 s (benchmarks/item_stall.py). The bounds on a body's objects and arrays and the items in
them (services/edge/json_bounds.py) now refuse such a body before its parse; lifted here, the parse is the one
watched."""

from __future__ import annotations

import gc
import threading
import time
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
EMPTY_LISTS = b'{"messages": [{"role": "user", "content": "x"}], "metadata": [' + b",".join([b"[]"] * 2_700_000) + b"]}"


@pytest.fixture
def parser_passes() -> Iterator[list[float]]:
    """How long each garbage collection pass run in the edge's body parser thread took, in seconds."""
    passes: list[float] = []
    started: dict[str, float] = {}

    def watch(phase: str, info: dict[str, Any]) -> None:
        thread = threading.current_thread().name
        if thread.startswith("edge-body-parse"):  # services/edge/off_loop.py: PARSER's threads
            if phase == "start":
                started[thread] = time.perf_counter()
            elif thread in started:
                passes.append(time.perf_counter() - started.pop(thread))

    gc.callbacks.append(watch)
    try:
        yield passes
    finally:
        gc.callbacks.remove(watch)


async def test_a_body_of_millions_of_empty_arrays_is_parsed_without_a_collection_pass(
    parser_passes: list[float], monkeypatch: pytest.MonkeyPatch
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
    # The collector back on, a pass or two over what little is left young: none over the body's values.
    held_s = sum(parser_passes)
    assert held_s < 0.05, f"{len(parser_passes)} collection passes in the parser's thread held the GIL {held_s:.2f} s"
