"""Fixtures shared by every test: a real Redis server, and the repository paths."""

from __future__ import annotations

import gc
import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis.asyncio as redis

from services.router.store.clock import MONEY_CLOCK
from tests.redis_servers import RedisCluster, RedisServer
from tests.task_leaks import no_task_left_running

ROOT = Path(__file__).resolve().parent.parent


def _worker_redis_url(url: str) -> str:
    """The database pair of this pytest-xdist worker: gw0 takes the given database and the one below it (the
    chain's), gw1 the two below those, and so on, so parallel workers never empty each other's data."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    parts = urlsplit(url)
    db = int(parts.path.strip("/") or 0) - 2 * int(worker.removeprefix("gw"))
    if db < 2:  # the chain takes db - 1, and database 0 is the default others use
        raise RuntimeError(f"TEST_REDIS_URL {url}: no database pair left for xdist worker {worker}")
    return urlunsplit(parts._replace(path=f"/{db}"))


# .ci/run points this at a redis-server it started when none answered on the default port.
REDIS_URL = _worker_redis_url(os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15"))
# Services that tests start on loopback are unauthenticated unless a test sets up credentials itself
# (tests/integration/test_auth.py does, with real certificates and tokens).
for _service in ("CLASSIFIER", "PROVIDERS", "ROUTER"):
    os.environ.setdefault(f"{_service}_AUTH", "none")
# This run's scratch directory: made by its first pytest process (xdist's workers inherit it, with the settings
# below) and removed by that process at its end (pytest_unconfigure), after every worker and the servers tests
# started have stopped.
_OWNS_SCRATCH = "LLMROUTER_TEST_SCRATCH" not in os.environ
if _OWNS_SCRATCH:
    os.environ["LLMROUTER_TEST_SCRATCH"] = tempfile.mkdtemp(prefix="llmrouter-test-")
SCRATCH = Path(os.environ["LLMROUTER_TEST_SCRATCH"])
# Routers started by tests keep their charge outbox in a scratch directory, never in the checkout.
os.environ.setdefault("ROUTER_DATA_DIR", str(SCRATCH / "router"))
# Services serve metrics on their documented ports by default; the processes tests launch must not take
# those ports on a shared machine (a test that wants metrics gives free ports).
for _service in ("CLASSIFIER", "PROVIDERS", "ROUTER", "EDGE"):
    os.environ.setdefault(f"{_service}_METRICS_PORT", "0")
# Routers that tests start write their SQL ledger here, never to the machine's shared default file.
os.environ.setdefault("ROUTER_LEDGER_SQL_PATH", str(SCRATCH / "ledger.sqlite3"))
# A PostgreSQL server the ledger tests make a throwaway database in (.ci/run starts one when none answers).
POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(autouse=True)
def _money_clock_on_the_machines(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test runs with the money's clock on this machine's (services/router/store/clock.py), and leaves it so.
    Redis' TIME here is the machine's, but a test that moves time.time() would have a store's ping (its own, or the
    upkeep of the session-scoped chain's router, tests/integration/conftest.py, which runs on the session's loop all
    session, in the tests of other files its xdist worker runs after) measure the move as an offset and undo it: so
    the clock follows Redis only in a test marked `money_clock_follows`."""
    monkeypatch.setattr(MONEY_CLOCK, "offset_s", 0.0)
    monkeypatch.setattr(MONEY_CLOCK, "readings", [])  # none of another test's (it may have moved time.time())
    if "money_clock_follows" not in request.keywords:
        monkeypatch.setattr(MONEY_CLOCK, "follow", lambda *_: None)


@pytest.fixture(autouse=True)
async def _no_task_left_running() -> AsyncIterator[None]:
    """Each test stops the asyncio tasks it starts: one left running would run on in the tests after it, on the
    session's loop (tests/task_leaks.py). Those of session-scoped fixtures' servers, theirs to stop, are no test's."""
    async with no_task_left_running():
        yield


def pytest_collection_finish(session: pytest.Session) -> None:
    """What collecting made (every test module and item, and the libraries they import: some 400,000 objects in a
    whole run's worker) lives all session: frozen out of the garbage collector's sight, so that no collection (the
    one tests/integration runs after each test, 0.3 s of CPU each, and Python's own full ones) looks through it again.
    Only what tests make is collected, as before."""
    gc.freeze()


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadfile`, but each directory whose files share a model trained by a session fixture goes to one
    worker whole (tests/scheduling.py): handed out file by file, both workers trained the same model."""
    if config.getvalue("dist") != "loadfile":
        return None  # xdist's own
    from tests.scheduling import FilesSharingATrainedModelTogether

    return FilesSharingATrainedModelTogether(config, log)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _OWNS_SCRATCH:
        shutil.rmtree(SCRATCH, ignore_errors=True)


@pytest.fixture(scope="session")
async def session_redis_url() -> AsyncIterator[str]:
    """A real Redis database, emptied once. No Redis is a failure, not a skip: .ci/run provides one."""
    client = redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except (redis.ConnectionError, OSError) as exc:
        pytest.fail(f"no Redis at {REDIS_URL} ({exc}); start redis-server or set TEST_REDIS_URL")
    await client.flushdb()
    yield REDIS_URL
    await client.aclose()


@pytest.fixture(scope="session")
async def chain_redis_url(session_redis_url: str) -> AsyncIterator[str]:
    """Another database of the same server, for servers that live all session (the chain's router runs its upkeep
    throughout): tests that empty theirs (redis_url) never empty it, nor meet its heartbeats or reconciler lease."""
    parts = urlsplit(session_redis_url)
    db = int(parts.path.strip("/") or 0)
    url = urlunsplit(parts._replace(path=f"/{db - 1}"))  # the one below: never 0, the default (_worker_redis_url)
    client = redis.from_url(url)
    await client.flushdb()
    yield url
    await client.aclose()


@pytest.fixture
async def redis_url(session_redis_url: str) -> AsyncIterator[str]:
    """The same database, empty for this test."""
    client = redis.from_url(session_redis_url)
    await client.flushdb()
    yield session_redis_url
    await client.flushdb()
    await client.aclose()


@pytest.fixture
def pausable_redis_url(tmp_path: Path) -> Iterator[str]:
    """A redis-server of this test's own, for a test that pauses its clients (CLIENT PAUSE): a pause, and CLIENT
    UNPAUSE, are server-wide, so on the shared server they would stall the other xdist worker's tests (and anyone
    else's on that server), or end another test's pause half-way."""
    server = RedisServer(tmp_path / "pausable-redis", "--save", "").start()
    yield server.url
    server.stop()


@pytest.fixture
def local_model() -> Path:
    """The local model's directory (artefacts/smollm2): missing, a skip, or a failure under CI=true."""
    from tests.ci import require_local_model  # tests.ci imports this module

    return require_local_model()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A real 3-master Redis Cluster on loopback, started once per session (about a second)."""
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster_url(redis_cluster: RedisCluster) -> Iterator[str]:
    """The cluster, empty for this test."""
    redis_cluster.flush()
    yield redis_cluster.url
    redis_cluster.flush()


@pytest.fixture(params=["redis", "cluster"])
def any_redis_url(request: pytest.FixtureRequest) -> str:
    """One Redis server, then a Redis Cluster: a test that takes this runs on both, each emptied for it."""
    return request.getfixturevalue("any_redis_url_" + request.param)


@pytest.fixture
def any_redis_url_redis(redis_url: str) -> str:
    return redis_url


@pytest.fixture
def any_redis_url_cluster(cluster_url: str) -> str:
    return cluster_url


async def ledger_records(client: Any) -> list[dict]:
    """Every record of every ledger shard (the router's ledger streams), shard by shard, as the charge built it (the
    stream keeps it compact)."""
    from services.router.store import SHARDS, ledger_key  # not at import: the settings above come first
    from services.router.store.ledger_entry import expanded

    records = []
    for shard in range(SHARDS):
        records += [expanded(json.loads(fields[b"record"])) for _, fields in await client.xrange(ledger_key(shard))]
    return records


async def tenant_ledger_records(redis_url: str, tenant: str) -> list[dict]:
    """ledger_records of one tenant, read over a client of its own."""
    client = redis.from_url(redis_url)
    try:
        return [r for r in await ledger_records(client) if r["tenant"] == tenant]
    finally:
        await client.aclose()
