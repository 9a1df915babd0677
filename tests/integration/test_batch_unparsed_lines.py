"""A stored input file's line the run cannot parse (here 1e400 in its body, which upload refuses since 1651779, written
into the store directly as a file taken before was, or a corrupted one): it failed the batch's run at that line each
time the batch was resumed (its offer to provider batches parsed it first), and its expiry parsed it too, so the batch
never ended. It is its own 400 now, the body the chat route gives its body alone, charged nothing; the others run."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as redis
from pydantic import SecretStr

from llmrouter.redis_url import RedisUrl
from services.batches.runner import SENT, UNREACHED
from services.batches.store import batch_key, file_key, sent_key
from services.edge.keys import key_line
from services.edge.settings import EdgeSettings
from tests.conftest import ledger_records
from tests.integration.conftest import Chain, free_port, quiet_edge_settings, served_edge
from tests.redis_servers import RedisServer
from tests.waiting import eventually

CREATE = {"endpoint": "/v1/chat/completions", "completion_window": "24h"}
PAST_RANGE_BODY = '{"model": "cheap-model", "messages": [{"role": "user", "content": "hi"}], "temperature": 1e400}'


def line(custom_id: str, body: str) -> str:
    return f'{{"custom_id": "{custom_id}", "method": "POST", "url": "/v1/chat/completions", "body": {body}}}'


def good_body(text: str) -> str:
    return json.dumps({"model": "cheap-model", "messages": [{"role": "user", "content": text}]})


async def stored_batch(client: httpx.AsyncClient, db: redis.Redis, content: str) -> str:
    """A batch over `content`, written into the store past the upload's check (a file it took before it refused 1e400
    is stored so): a good file is uploaded, its content replaced before the batch is created."""
    good = "".join(line(f"x-{i}", good_body("x")) + "\n" for i in range(content.count("\n")))
    uploaded = await client.post("/files", files={"file": ("b.jsonl", good.encode())}, data={"purpose": "batch"})
    assert uploaded.status_code == 200, uploaded.text
    file_id = uploaded.json()["id"]
    await db.hset(file_key(file_id), mapping={"content": content.encode(), "bytes": str(len(content.encode()))})
    created = await client.post("/batches", json={"input_file_id": file_id, **CREATE})
    assert created.status_code == 200, created.text
    return str(created.json()["id"])


async def ended(client: httpx.AsyncClient, batch_id: str, timeout_s: float) -> dict[str, Any]:
    batch: dict[str, Any] = {}

    async def over() -> bool:
        nonlocal batch
        batch = (await client.get(f"/batches/{batch_id}")).json()
        return batch["status"] in ("completed", "cancelled", "failed", "expired")

    await eventually(over, f"batch {batch_id} ended", timeout_s=timeout_s)
    return batch


async def file_lines(client: httpx.AsyncClient, file_id: str | None) -> dict[str | None, dict[str, Any]]:
    if file_id is None:
        return {}
    text = (await client.get(f"/files/{file_id}/content")).text
    return {entry["custom_id"]: entry for entry in map(json.loads, text.splitlines())}


async def test_a_stored_line_the_run_cannot_parse_is_its_own_400_and_the_rest_of_the_batch_runs(chain: Chain) -> None:
    tenant, key = f"unparsed-{secrets.token_hex(4)}", f"sk-unparsed-{secrets.token_urlsafe(12)}"
    settings = EdgeSettings(
        port=free_port(),
        router_addr=chain.router_addr,
        api_keys=SecretStr(key_line(tenant, key)),
        batch_redis_url=RedisUrl(chain.redis_url),
    )
    # The last line corrupted past reading its custom_id: named by its place among the requests.
    content = "\n".join([line("a", good_body("first")), line("b", PAST_RANGE_BODY), line("c", good_body("last")), "}{"])
    db = redis.from_url(chain.redis_url)
    try:
        async with (
            served_edge(settings) as base,
            httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client,
        ):
            batch_id = await stored_batch(client, db, content + "\n")
            # Resumed after a failed run only 30 s on (FAILED_FIRST_S): a run failing at the line fails this.
            batch = await ended(client, batch_id, timeout_s=20)
            output = await file_lines(client, batch["output_file_id"])
            errors = await file_lines(client, batch["error_file_id"])
            # What the chat route answers the line's body sent alone.
            alone = await client.post(
                "/chat/completions", content=PAST_RANGE_BODY, headers={"Content-Type": "application/json"}
            )
        ledger = {r["request_id"] for r in await ledger_records(db) if r["tenant"] == tenant}
    finally:
        await db.aclose()
    assert batch["status"] == "completed", batch
    assert batch["request_counts"] == {"total": 4, "completed": 2, "failed": 2}
    assert list(output) == ["a", "c"] and all(o["response"]["status_code"] == 200 for o in output.values())
    assert list(errors) == ["b", None]
    assert alone.status_code == 400
    response = errors["b"]["response"]
    assert (response["status_code"], response["body"]) == (400, alone.json())
    assert response["request_id"] == f"{batch_id}:b"
    assert "x_router" not in response["body"]  # charged nothing: it never reached the router
    corrupted = errors[None]["response"]
    assert corrupted["status_code"] == 400 and corrupted["request_id"] == f"{batch_id}:line-4"
    assert corrupted["body"]["error"]["code"] == "invalid_json"
    assert corrupted["body"]["error"]["message"].startswith("the batch line is not valid JSON: Expecting value")
    assert ledger == {f"{batch_id}:a", f"{batch_id}:c"}


def unreached_edge(store: RedisServer, **settings: Any) -> EdgeSettings:
    """An anonymous edge on the store whose router is out of reach: its batches send no line."""
    return quiet_edge_settings("127.0.0.1:1", batch_redis_url=RedisUrl(store.url), **settings)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(tmp_path, "--save", "").start()
    yield server
    server.stop()


async def test_a_batch_with_such_a_line_expires_at_its_windows_end(store: RedisServer) -> None:
    """The router out of reach, a 2 s window: no line is sent, and the batch ends `expired` on time, every line a
    `batch_expired` line of the error file, the line that cannot be parsed (a corrupted one too) under its custom_id
    as far as it can be read; its expiry parsed each line for its custom_id and failed, for ever."""
    settings = unreached_edge(store, batch_window_s=2)
    corrupted = line("d", good_body("cut"))[:40]
    content = "\n".join([line("a", good_body("first")), line("b", PAST_RANGE_BODY), corrupted]) + "\n"
    db = redis.from_url(store.url)
    try:
        async with served_edge(settings) as base, httpx.AsyncClient(base_url=base, timeout=10) as client:
            batch_id = await stored_batch(client, db, content)
            expires_at = int(await db.hget(batch_key(batch_id), "expires_at") or 0)
            batch = await ended(client, batch_id, timeout_s=15)
            errors = await file_lines(client, batch["error_file_id"])
    finally:
        await db.aclose()
    assert batch["status"] == "expired" and batch["expired_at"] <= expires_at + 3, batch
    assert batch["request_counts"] == {"total": 3, "completed": 0, "failed": 3}
    assert list(errors) == ["a", "b", "d"]
    assert all(e["error"]["code"] == "batch_expired" and e["response"] is None for e in errors.values())


async def test_a_cancelled_batch_whose_line_in_doubt_cannot_be_parsed_ends_with_it_of_an_unknown_outcome(
    store: RedisServer,
) -> None:
    """A line sent before (parsed then: the parser changed since) whose result was lost is sent again first, even
    cancelled; it cannot be now, nor said to be charged nothing (it may have run): it is `outcome_unknown`, and the
    cancel ends the batch, whose run failed at that line, for ever."""
    content = "\n".join([line("a", good_body("first")), line("b", PAST_RANGE_BODY)]) + "\n"
    db = redis.from_url(store.url)
    try:
        async with served_edge(unreached_edge(store)) as base, httpx.AsyncClient(base_url=base, timeout=10) as client:
            batch_id = await stored_batch(client, db, content)

            async def parked() -> bool:
                return bool(await db.hexists(batch_key(batch_id), UNREACHED))

            await eventually(parked, "the run finds the router out of reach")
            await db.hset(sent_key(batch_id), "1", SENT)  # in flight when its edge died: in doubt
            cancelled = await client.post(f"/batches/{batch_id}/cancel")
            assert cancelled.status_code == 200, cancelled.text
            batch = await ended(client, batch_id, timeout_s=20)
            errors = await file_lines(client, batch["error_file_id"])
    finally:
        await db.aclose()
    assert batch["status"] == "cancelled", batch
    assert batch["request_counts"] == {"total": 2, "completed": 0, "failed": 1}
    assert list(errors) == ["b"] and errors["b"]["response"] is None
    assert errors["b"]["error"] == {  # what happened: the batch was cancelled (its window never expired)
        "code": "outcome_unknown",
        "message": "This request was sent before the batch was cancelled and its result was lost; it was not sent "
        "again, as its line of the input file can no longer be parsed. Whether it ran, and what it cost, is in the "
        "ledger under its id.",
    }
