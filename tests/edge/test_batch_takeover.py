"""A batch creation stalled past CREATING_S between its Idempotency-Key's claim and its batch's activation (its edge
paused, its VM frozen) is taken over by a retry: the stalled creation, resuming, must not run its batch beside the
one that took its place (both ran, and were charged: the tenant paid twice for one keyed request); nor a run undo a
cancel that came as it read its batch, by the same one step of its start. The stall made at
chosen store calls of the edge (held there until the test lets them go), never by sleeping; on the store in process,
a Redis and a Redis Cluster."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from llmrouter.redis_url import RedisUrl
from services.batches import idempotent, wire
from services.batches.store import Store, batch_key, open_store
from services.edge.keys import key_line
from tests.edge.conftest import recorded_edge
from tests.fakes.recording_router import RecordingRouter
from tests.waiting import eventually

LINE = {
    "custom_id": "a",
    "method": "POST",
    "url": wire.ENDPOINT,
    "body": {"messages": [{"role": "user", "content": "hi"}]},
}
KEY = "sk-acme-a"


@dataclass
class Hold:
    """A store call held once it is made, until the test releases it."""

    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    released: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self) -> None:
        self.arrived.set()
        await self.released.wait()


class Stalling:
    """The edge's batch store, holding the first batch's activation (the stalled creation), and when armed, the next
    look at whether it is active (a retry's, about to take it over) and the next read of its hash (its run's)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.activating: Hold | None = Hold()
        self.looking: Hold | None = None
        self.reading: Hold | None = None
        self.stalled = ""

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def activate(self, batch_id: str, active: bool) -> None:
        if active and (hold := self.activating) is not None:
            self.activating, self.stalled = None, batch_id
            await hold()
        await self.store.activate(batch_id, active)

    async def is_active(self, batch_id: str) -> bool:
        found = await self.store.is_active(batch_id)
        if batch_id == self.stalled and (hold := self.looking) is not None:
            self.looking = None
            await hold()
        return found

    async def get(self, key: str) -> dict[str, bytes]:
        found = await self.store.get(key)
        if self.stalled and key == batch_key(self.stalled) and (hold := self.reading) is not None:
            self.reading = None
            await hold()
        return found


@dataclass
class Edge:
    http: httpx.AsyncClient
    router: RecordingRouter
    store: Stalling


@pytest.fixture(params=["memory", "redis", "cluster"])
def store_url(request: pytest.FixtureRequest) -> RedisUrl | None:
    """The batch store: in process, then a real Redis, then a Redis Cluster."""
    return None if request.param == "memory" else RedisUrl(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture
async def edge(store_url: RedisUrl | None, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Edge]:
    """An edge whose batch store stalls as the test says."""
    stalling: list[Stalling] = []

    def opened(at: Any) -> Stalling:
        stalling.append(Stalling(open_store(at)))
        return stalling[-1]

    monkeypatch.setattr("services.edge.app.open_store", opened)
    async with (
        recorded_edge(api_keys=SecretStr(key_line("acme", KEY)), batch_redis_url=store_url) as served,
        served.client(KEY) as http,
    ):
        yield Edge(http, served.router, stalling[0])


async def create(http: httpx.AsyncClient, file_id: str) -> httpx.Response:
    body = {"endpoint": wire.ENDPOINT, "completion_window": "24h", "input_file_id": file_id}
    return await http.post("/batches", json=body, headers={"Idempotency-Key": "stalls"})


async def stall(edge: Edge) -> tuple[str, asyncio.Future[httpx.Response], Hold]:
    """A creation held before its batch's activation, its batch then made older than CREATING_S: its input file's id,
    the creation's reply to come and its hold."""
    files = {"file": ("batch.jsonl", json.dumps(LINE).encode())}
    file_id = (await edge.http.post("/files", files=files, data={"purpose": "batch"})).json()["id"]
    activating = edge.store.activating
    assert activating is not None
    first = asyncio.ensure_future(create(edge.http, file_id))
    await activating.arrived.wait()
    created = str(int(time.time()) - idempotent.CREATING_S - 1)
    await edge.store.store.put(batch_key(edge.store.stalled), {"created_at": created})
    return file_id, first, activating


async def ran_once(edge: Edge, retried: httpx.Response) -> None:
    """The retry's batch completes, the stalled one ends `failed`, never run: the one line sent (and charged) once."""
    assert retried.status_code == 200, retried.text
    made, stalled = retried.json()["id"], edge.store.stalled
    assert made != stalled

    def ended(batch_id: str) -> Callable[[], Awaitable[bool]]:
        async def is_ended() -> bool:
            reply = await edge.http.get(f"/batches/{batch_id}")
            return bool(reply.json()["status"] in ("completed", "failed", "cancelled", "expired"))

        return is_ended

    await eventually(ended(made), "the retry's batch ended")
    await eventually(ended(stalled), "the stalled batch ended")
    assert [r.request_id.rsplit(":", 1)[-1] for r in edge.router.asked] == ["a"]  # one line, sent once
    assert (await edge.http.get(f"/batches/{made}")).json()["status"] == "completed"
    told = (await edge.http.get(f"/batches/{stalled}")).json()
    assert (told["status"], told["errors"]["data"][0]["code"]) == ("failed", "creation_taken_over")
    again = await create(edge.http, retried.json()["input_file_id"])
    assert (again.status_code, again.json()["id"]) == (200, made), again.text  # the record names the retry's batch


async def test_a_stalled_creation_resuming_after_its_takeover_never_runs_its_batch(edge: Edge) -> None:
    file_id, first, activating = await stall(edge)
    retried = await create(edge.http, file_id)  # takes over the stalled creation's record
    activating.released.set()  # the stalled creation resumes, and activates its batch
    resumed = await first
    assert (resumed.status_code, resumed.json()["id"]) == (200, edge.store.stalled), resumed.text
    await ran_once(edge, retried)


async def test_a_run_reading_its_batch_as_it_is_taken_over_never_runs_it(edge: Edge) -> None:
    """The takeover looks (not active), then the stalled creation activates its batch and its run reads it
    `validating`; the takeover then fails it, before the run moves it on: the run, moving it `in_progress` only if
    still `validating`, must not start it (read, then written apart, it ran beside the retry's)."""
    file_id, first, activating = await stall(edge)
    edge.store.looking = looking = Hold()
    retrying = asyncio.ensure_future(create(edge.http, file_id))
    await looking.arrived.wait()  # the retry found the stalled batch not active
    edge.store.reading = reading = Hold()
    activating.released.set()
    await reading.arrived.wait()  # activated, and its run read it `validating`
    looking.released.set()
    retried = await retrying
    reading.released.set()
    assert (await first).status_code == 200
    await ran_once(edge, retried)


async def test_a_batch_cancelled_as_its_run_reads_it_ends_cancelled_sending_nothing(edge: Edge) -> None:
    """Cancelled between its run's read (`validating`) and its start: the same one step keeps the cancel (read, then
    written apart, `in_progress` overwrote `cancelling` and the batch ran to `completed`)."""
    files = {"file": ("batch.jsonl", json.dumps(LINE).encode())}
    file_id = (await edge.http.post("/files", files=files, data={"purpose": "batch"})).json()["id"]
    activating = edge.store.activating
    assert activating is not None
    creating = asyncio.ensure_future(create(edge.http, file_id))
    await activating.arrived.wait()
    edge.store.reading = reading = Hold()
    activating.released.set()
    await reading.arrived.wait()  # its run read it `validating`
    batch_id = (await creating).json()["id"]
    cancelling = await edge.http.post(f"/batches/{batch_id}/cancel")
    assert (cancelling.status_code, cancelling.json()["status"]) == (200, "cancelling"), cancelling.text
    reading.released.set()

    async def ended() -> bool:
        return bool((await edge.http.get(f"/batches/{batch_id}")).json()["status"] not in ("cancelling", "in_progress"))

    await eventually(ended, "the batch ended")
    assert (await edge.http.get(f"/batches/{batch_id}")).json()["status"] == "cancelled"
    assert edge.router.asked == []


async def test_a_retry_finding_the_stalled_batch_started_as_it_looked_is_told_that_batch(edge: Edge) -> None:
    """The takeover reads the stalled batch `validating` and not active; then the stalled creation activates it and its
    run starts it (`in_progress`) before the takeover fails it: the takeover, failing it only while still `validating`,
    must leave it running and tell the retry that batch (failing a running batch, it ran beside the retry's own)."""
    file_id, first, activating = await stall(edge)
    edge.store.looking = looking = Hold()
    retrying = asyncio.ensure_future(create(edge.http, file_id))
    await looking.arrived.wait()  # the retry found the stalled batch not active
    activating.released.set()
    assert (await first).status_code == 200
    stalled = edge.store.stalled

    async def started() -> bool:
        return (await edge.store.store.get(batch_key(stalled))).get("status") != b"validating"

    await eventually(started, "the stalled batch's run started it")
    looking.released.set()
    retried = await retrying
    assert (retried.status_code, retried.json()["id"]) == (200, stalled), retried.text

    async def completed() -> bool:
        return bool((await edge.http.get(f"/batches/{stalled}")).json()["status"] == "completed")

    await eventually(completed, "the stalled batch completed")
    assert "errors" not in await edge.store.store.get(batch_key(stalled))
    assert [r.request_id.rsplit(":", 1)[-1] for r in edge.router.asked] == ["a"]  # one line, sent once
