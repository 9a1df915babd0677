"""A budget refusal tells OpenAI's SDKs whether to retry it, through the whole chain (edge, router, Redis): refused by
the budget's settled spend alone, it can never be admitted this period, so the 429 carries `x-should-retry: false`
and the SDK sends it once; refused because other requests' holds take the room, it may be admitted once they settle,
so the SDK retries it as any 429."""

from __future__ import annotations

import secrets

import httpx2
import openai
import pytest

from services.router.store import Account, Allowance, Hold, RedisStore, key_id, period_id
from tests.integration.conftest import Chain

USD = 10**12  # pico-dollars


def counted_client(chain: Chain, role: str, max_retries: int) -> tuple[openai.AsyncOpenAI, list[httpx2.Request]]:
    """The keyed edge as the tenant of `role`, and every HTTP request the SDK sends (its retries included)."""
    sent: list[httpx2.Request] = []

    async def record(request: httpx2.Request) -> None:
        sent.append(request)

    http = httpx2.AsyncClient(event_hooks={"request": [record]})
    api_key = chain.keys[role][1]
    return openai.AsyncOpenAI(
        base_url=chain.keyed_url, api_key=api_key, max_retries=max_retries, http_client=http
    ), sent


async def ask(client: openai.AsyncOpenAI, stream: bool = False) -> None:
    answer = await client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": f"Say hello. [{secrets.token_hex(4)}]"}], stream=stream
    )
    if isinstance(answer, openai.AsyncStream):
        async for _ in answer:
            pass


async def test_a_budget_its_spend_has_exhausted_says_not_to_retry(chain: Chain) -> None:
    tenant, api_key = chain.keys["overspent"]
    client, sent = counted_client(chain, "overspent", max_retries=2)
    await ask(client)  # no limit yet: served and charged
    store = RedisStore(chain.redis_url)
    try:
        spent, _ = await store.spent(Account(tenant, key_id(api_key)), period_id("day"))
        assert spent > 0
        await store.set_limit("tenant", tenant, spent)  # the settled spend is at the limit; nothing is held
    finally:
        await store.close()
    sent.clear()
    with pytest.raises(openai.RateLimitError) as err:
        await ask(client)
    assert (err.value.code, err.value.type) == ("insufficient_quota", "insufficient_quota")
    assert err.value.response.headers.get("x-should-retry") == "false"
    assert len(sent) == 1  # the SDK did not retry (it would have twice more)
    sent.clear()
    with pytest.raises(openai.RateLimitError) as err:  # a stream is refused before it starts, headers and all
        await ask(client, stream=True)
    assert err.value.response.headers.get("x-should-retry") == "false" and len(sent) == 1


async def test_a_budget_held_by_requests_in_flight_may_be_retried(chain: Chain) -> None:
    tenant, api_key = chain.keys["crowded"]
    account = Account(tenant, key_id(api_key))
    store = RedisStore(chain.redis_url)
    try:
        await store.set_limit("tenant", tenant, USD)
        # Another request in flight holds the whole budget; nothing is spent.
        other = Hold(f"in-flight-{secrets.token_hex(4)}", USD, period_id("day"), "another-router", secrets.token_hex(8))
        assert (await store.admit(account, Allowance("day"), other)).refused == ""  # the limit set above
        client, sent = counted_client(chain, "crowded", max_retries=1)
        with pytest.raises(openai.RateLimitError) as err:
            await ask(client)
        assert (err.value.code, err.value.type) == ("insufficient_quota", "insufficient_quota")
        assert "x-should-retry" not in err.value.response.headers
        assert len(sent) == 2  # the SDK retried it
        # Once the hold is gone (its request ended without cost), the same request is admitted.
        assert await store.undo(account, other)
        await ask(client)
    finally:
        await store.close()
