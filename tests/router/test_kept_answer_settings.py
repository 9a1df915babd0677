"""How long a provider batch line a collect settled is kept, and how large one may be, are the router's settings
(ROUTER_BATCH_ANSWER_KEPT_S, ROUTER_BATCH_ANSWER_KEPT_BYTES), bounded at start with the setting named: kept for less
than the caller's day-long batch window, an answer charged could be lost to a collect whose reply was lost; past a
week (the longest hold) or past 8 MiB (half a reply's gRPC message), the money Redis every tenant's charges need fills
with answers told only after a lost reply. The collect keeps each line for as long and up to as large as set: the
router's servicer over Redis, a stand-in providers gRPC server on loopback answering every line."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from llmrouter.auth import acting_as
from llmrouter.v1 import provider_pb2, router_pb2
from services.router.settings import RouterSettings
from services.router.store import AccountKeys, RedisStore
from tests.router.servicer_kit import NoDeadline, router_servicer
from tests.router.test_collect_model import (
    ACCOUNT,
    LINE,
    REGISTRY,
    TENANT_CALLER,
    USAGE,
    BatchProvider,
    collect_of,
    send_line,
)

# Random hex: compressed, still ~4.7 KB kept, past the least bound a deployment may set and far within the default.
ANSWER = provider_pb2.GenerateResponse(content=secrets.token_hex(4096), usage=USAGE, finish_reason="stop")


class Answering(BatchProvider):
    async def PollBatch(self, request: Any, context: Any) -> provider_pb2.PollBatchResponse:
        results = [
            provider_pb2.BatchLineResult(request_id=request_id, succeeded=True, response=ANSWER)
            for request_id in request.request_ids
        ]
        return provider_pb2.PollBatchResponse(status="completed", ended=True, results=results)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ROUTER_BATCH_ANSWER_KEPT_S", "3600"),  # shorter than the caller's batch window
        ("ROUTER_BATCH_ANSWER_KEPT_S", str(8 * 86400)),
        ("ROUTER_BATCH_ANSWER_KEPT_S", "nan"),
        ("ROUTER_BATCH_ANSWER_KEPT_BYTES", "1024"),
        ("ROUTER_BATCH_ANSWER_KEPT_BYTES", str(9 * 1024 * 1024)),
        ("ROUTER_BATCH_ANSWER_KEPT_BYTES", "a megabyte"),
    ],
)
def test_a_kept_answer_setting_out_of_bounds_is_refused_at_start_naming_it(
    name: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=name.removeprefix("ROUTER_").lower()):
        RouterSettings()


def test_a_kept_answer_is_kept_a_day_up_to_a_mebibyte_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = RouterSettings()
    assert (settings.batch_answer_kept_s, settings.batch_answer_kept_bytes) == (86_400, 1024 * 1024)
    monkeypatch.setenv("ROUTER_BATCH_ANSWER_KEPT_S", "172800")
    monkeypatch.setenv("ROUTER_BATCH_ANSWER_KEPT_BYTES", "4096")
    settings = RouterSettings()
    assert (settings.batch_answer_kept_s, settings.batch_answer_kept_bytes) == (172_800, 4096)


async def collected(redis_store: RedisStore, tmp_path: Path, **settings: Any) -> router_pb2.CollectedLine:
    async with router_servicer(tmp_path, redis_store, Answering(), REGISTRY, **settings) as router:
        with acting_as(TENANT_CALLER):
            sent = await send_line(router)
            collect = collect_of(sent)
            (line,) = (await router.CollectBatch(collect, NoDeadline())).lines
    return line


async def test_a_collect_keeps_a_line_as_long_as_set(redis_store: RedisStore, tmp_path: Path) -> None:
    line = await collected(redis_store, tmp_path, batch_answer_kept_s=3 * 86_400)
    assert line.succeeded and line.response.content == ANSWER.content
    kept_ms = await redis_store.redis.pttl(AccountKeys.of(ACCOUNT).answer(LINE.request_id))
    assert 2 * 86_400_000 < kept_ms <= 3 * 86_400_000


async def test_a_collect_keeps_no_line_larger_than_set(redis_store: RedisStore, tmp_path: Path) -> None:
    line = await collected(redis_store, tmp_path, batch_answer_kept_bytes=4096)
    assert line.succeeded and line.response.content == ANSWER.content  # told all the same, and charged
    assert await redis_store.kept_answer(ACCOUNT, LINE.request_id) is None
