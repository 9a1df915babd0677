"""A Retry-After no clock can hold (an HTTP date whose day or second overflows a C long) is no Retry-After: the
429 stays a rate limit, retried and told as one, rather than an exception no gateway expects."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from tests.providers.conftest import providers_service
from tests.providers.helpers import collect, error_of, request
from tests.providers.test_hostile_upstream import RawUpstream, reply

OVERFLOWING_DATES = [
    "Mon, 01 Jan 2020 00:00:99999999999999999999 GMT",
    "Mon, 01 Jan 99999999999999999999 00:00:00 GMT",
]


@pytest.mark.parametrize("date", OVERFLOWING_DATES)
@pytest.mark.parametrize("streamed", [False, True])
async def test_a_429_with_an_overflowing_retry_after_date_is_a_rate_limit(
    tmp_path: Path, date: str, streamed: bool
) -> None:
    body = b'{"error": {"type": "rate_limit_error", "message": "slow down"}}'
    async with (
        RawUpstream(reply(429, body, retry_after=date)) as upstream,
        providers_service(tmp_path, upstream.url, upstream.url, max_retries=1) as stub,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await (collect(stub, request("cheap")) if streamed else stub.Generate(request("cheap")))
    err = error_of(caught.value)
    assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED and err.reason == "UPSTREAM_RATE_LIMITED", err.message
    assert err.metadata["retries"] == "1" and len(upstream.received) == 2  # retried, as any 429
    assert "retry_after_s" not in err.metadata  # no wait said: none told
