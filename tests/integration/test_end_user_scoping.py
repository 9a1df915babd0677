"""The end-user fields reach the shared provider account scoped to the paying tenant: two tenants naming the same end
user and prompt-cache key are two end users and two cache buckets to the provider, each tenant's the same from one
request to the next; the caller's value itself never leaves the router, and the response cache still answers the
tenant's identical request."""

from __future__ import annotations

from typing import Any

from services.router.end_users import END_USER_FIELDS, scoped_id
from tests.integration.conftest import Chain
from tests.integration.test_chain import client, unique

# Tenant A's end user and cache key, as tenant B may also write them.
FIELDS = {"user": "end-user-7", "safety_identifier": "end-user-7", "prompt_cache_key": "support-bot"}


async def sent_for(chain: Chain, role: str, prompt: str) -> tuple[dict[str, Any], bool]:
    """What the upstream was sent of the end-user fields for `role`'s request, and whether the answer was cached."""
    before = len(chain.budget.requests)
    messages: Any = [{"role": "user", "content": prompt}]
    raw = await client(chain, role).chat.completions.with_raw_response.create(
        model="cheap-model",
        messages=messages,
        max_tokens=16,
        user=FIELDS["user"],
        safety_identifier=FIELDS["safety_identifier"],
        prompt_cache_key=FIELDS["prompt_cache_key"],
    )
    extra = raw.parse().model_extra
    assert extra is not None
    if extra["x_router"]["cache_hit"]:
        assert len(chain.budget.requests) == before
        return {}, True
    return {name: chain.budget.requests[-1].json[name] for name in END_USER_FIELDS}, False


async def test_tenants_naming_the_same_end_user_reach_the_provider_as_two(chain: Chain) -> None:
    (tenant_a, _), (tenant_b, _) = chain.keys["end_users_a"], chain.keys["end_users_b"]
    first_a, _ = await sent_for(chain, "end_users_a", unique("capital of France?"))
    second_a, _ = await sent_for(chain, "end_users_a", unique("capital of Spain?"))
    sent_b, _ = await sent_for(chain, "end_users_b", unique("capital of France?"))
    assert first_a == second_a == {name: scoped_id(tenant_a, value) for name, value in FIELDS.items()}
    assert sent_b == {name: scoped_id(tenant_b, value) for name, value in FIELDS.items()}
    for name, value in FIELDS.items():
        assert first_a[name] != sent_b[name]
        assert value not in (first_a[name], sent_b[name])
    assert first_a["user"] == first_a["safety_identifier"]  # one end user, however the tenant names the field


async def test_the_response_cache_still_answers_a_tenants_identical_request(chain: Chain) -> None:
    prompt = unique("capital of Italy?")
    sent, cached = await sent_for(chain, "end_users_a", prompt)
    assert sent and not cached
    assert (await sent_for(chain, "end_users_a", prompt))[1]
