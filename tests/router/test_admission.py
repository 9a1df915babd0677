"""Admission on its own, over the in-process store: each model's max_tokens, the hold of the plan's worst case,
and what a budget's remainder does to both."""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as redis

from llmrouter.errors import ServiceError
from llmrouter.passthrough import END_USER_ID_CHARS, MAX_STOP, MAX_STOP_CHARS
from llmrouter.registry import Registry
from llmrouter.v1 import common_pb2, router_pb2
from services.router import admission, policy, routing
from services.router.costs import worst_pico
from services.router.outbox import Outbox
from services.router.routed import Routed
from services.router.settings import RouterSettings
from services.router.store import Account, AccountKeys, Allowance, Hold, MemoryStore, RedisStore, lua, period_id
from tests.fakes.lossy_proxy import LossyProxy

REGISTRY = Registry.model_validate(
    {
        "tiers": ["economy", "premium"],
        "providers": {"p": {"kind": "openai", "base_url": "http://x"}},
        "models": [
            {"name": "cheap", "provider": "p", "tier": "economy", "input_usd_per_mtok": "0.50",
             "output_usd_per_mtok": "1.50", "context_window": 8000, "max_output_tokens": 4000, "quality_prior": 0.8,
             "tokenizer": "cl100k_base"},
            {"name": "strong", "provider": "p", "tier": "premium", "input_usd_per_mtok": "5",
             "output_usd_per_mtok": "15", "context_window": 100000, "max_output_tokens": 16000,
             "quality_prior": 0.95, "tokenizer": "cl100k_base"},
        ],
    }
)  # fmt: skip
# The cheap model (0.8) is within 0.8 of the strong one's quality (0.95): routed first, whatever the default.
SETTINGS = RouterSettings(min_output_tokens=16, default_quality_target=0.8)
ACCOUNT = Account("acme", "key")


def scratch_outbox() -> Outbox:
    """An outbox of its own, in a scratch directory (the in-process store never needs it)."""
    return Outbox(Path(tempfile.mkdtemp(prefix="llmrouter-test-")))


async def routed(
    request: router_pb2.CompleteRequest, gate: admission.Admission | None = None
) -> tuple[admission.Admission, Routed]:
    """A request as the servicer routes it: the cheap model first, the strong one as its fallback; its key's binding
    checked (key_tenants.py), so its admission sends nothing else (the binding remembered)."""
    gate = gate or admission.Admission(SETTINGS, REGISTRY, MemoryStore(), scratch_outbox())
    limits = await gate.limits(request)
    await gate.key_tenants.check(ACCOUNT)
    plan = policy.plan(REGISTRY, policy.evaluate(REGISTRY.models, {}, limits), limits, classified=True)
    decision = routing.decision(plan, limits, "")
    caps = admission.output_caps(plan, limits, decision)
    return gate, Routed(request, uuid.uuid4().hex, ACCOUNT, limits, plan, decision, caps)


def request(content: str = "Hello there", **fields: Any) -> router_pb2.CompleteRequest:
    return router_pb2.CompleteRequest(messages=[common_pb2.ChatMessage(role="user", content=content)], **fields)


async def test_without_limits_each_model_may_write_all_it_can_and_the_hold_is_the_costliest() -> None:
    gate, r = await routed(request())
    assert [o.model.name for o in r.plan.order] == ["cheap", "strong"]
    assert r.max_tokens == {"cheap": 4000, "strong": 16000}
    await gate.admit(r)
    assert r.hold is not None
    assert r.hold.pico == worst_pico(REGISTRY.models[1], r.limits.input_tokens, 16000)  # not an estimate
    assert not r.decision.HasField("max_tokens_capped")


async def test_the_context_window_and_the_callers_max_tokens_bound_the_output() -> None:
    _, r = await routed(request("word " * 6000))
    assert r.max_tokens["cheap"] == 8000 - r.limits.input_tokens
    _, r = await routed(request(max_tokens=100))
    assert r.max_tokens == {"cheap": 100, "strong": 100}


async def test_max_cost_lowers_max_tokens_and_says_so() -> None:
    _, r = await routed(request(max_cost_usd="0.001"))  # cheap: ~660 tokens; strong: ~65
    cheap, strong = REGISTRY.models
    for model in (cheap, strong):
        cap = r.max_tokens[model.name]
        assert (
            worst_pico(model, r.limits.input_tokens, cap) <= 10**9 < worst_pico(model, r.limits.input_tokens, cap + 1)
        )
    assert r.decision.max_tokens_capped == r.max_tokens["cheap"]
    assert "to fit max_cost_usd" in r.decision.reason


async def test_a_budgets_remainder_caps_the_chosen_model_and_drops_a_fallback_it_cannot_pay() -> None:
    gate, r = await routed(request())
    remainder = 200_000_000  # $0.0002: about 130 tokens of cheap, under 16 of strong
    assert isinstance(gate.store, MemoryStore)
    await gate.store.set_limit("tenant", ACCOUNT.tenant, remainder)
    await gate.admit(r)
    assert [o.model.name for o in r.plan.order] == ["cheap"]
    assert r.hold is not None and r.hold.pico <= remainder
    assert r.decision.max_tokens_capped == r.max_tokens["cheap"] and 100 < r.max_tokens["cheap"] < 4000
    assert "remaining tenant budget" in r.decision.reason

    _, again = await routed(request(), gate)
    with pytest.raises(ServiceError) as err:
        await gate.admit(again)  # what is left cannot pay for 16 tokens
    assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and err.value.reason == "BUDGET_EXCEEDED"
    assert again.hold is None


async def test_a_refusal_says_not_to_retry_only_when_spend_alone_leaves_too_little() -> None:
    """Holds come and go; spend stays for the period. Refused while another request's hold takes the room, a retry may
    be admitted once it settles: no `retryable` in the refusal. Refused once that request's charge is spent, or with a
    limit no short answer fits in, never again this period: `retryable: false` (the edge's x-should-retry: false)."""
    gate, first = await routed(request())
    assert isinstance(gate.store, MemoryStore)
    await gate.store.set_limit("tenant", ACCOUNT.tenant, 200_000_000)
    await gate.admit(first)
    assert first.hold is not None

    async def refusal() -> ServiceError:
        _, again = await routed(request(), gate)
        with pytest.raises(ServiceError) as err:
            await gate.admit(again)
        assert err.value.reason == "BUDGET_EXCEEDED"
        return err.value

    held = await refusal()
    assert "retryable" not in held.metadata and "once they settle" in held.message
    assert await gate.store.charge(ACCOUNT, first.hold, first.hold.pico, {})  # its hold, spent
    assert (await refusal()).metadata["retryable"] == "false"
    await gate.store.set_limit("tenant", ACCOUNT.tenant, first.hold.pico + 1_000)  # nothing held, 1,000 pico left
    spent = await refusal()
    assert spent.metadata["retryable"] == "false" and "is spent" in spent.message


async def test_a_refusal_for_good_names_the_budget_that_is_spent() -> None:
    """The budget another key's request in flight leaves least room in (the tenant's) is not the one that is spent
    (the key's): a refusal for good names the spent one, whose limit is the one to raise."""
    gate, first = await routed(request())
    assert isinstance(gate.store, MemoryStore)
    await gate.store.set_limit("key", ACCOUNT.key, 1_000_000)
    await gate.store.set_limit("tenant", ACCOUNT.tenant, 10**12)
    day = period_id("day")
    assert await gate.store.charge(ACCOUNT, Hold("spent", 999_000, day), 999_000, {})  # 1,000 pico left for good
    other = Hold("in-flight", 10**12 - 999_000 - 500, day, "router", "nonce")  # 500 pico of the tenant's left
    assert (await gate.store.admit(Account(ACCOUNT.tenant, "other-key"), Allowance("day"), other)).refused == ""
    with pytest.raises(ServiceError) as err:
        await gate.admit(first)
    assert err.value.reason == "BUDGET_EXCEEDED" and err.value.metadata == {"budget": "key", "retryable": "false"}
    assert err.value.message.startswith("the key budget for this day is spent")


@pytest.mark.parametrize(("fields", "short"), [({"max_tokens": 5}, 5), ({}, 16)])
async def test_a_refusal_names_the_short_answer_the_request_asked(fields: dict[str, Any], short: int) -> None:
    """A request whose max_tokens is under ROUTER_MIN_OUTPUT_TOKENS needs a budget that pays for that many: its refusal
    says so, not a 16-token answer it never asked for."""
    gate, r = await routed(request(**fields))
    assert isinstance(gate.store, MemoryStore)
    await gate.store.set_limit("tenant", ACCOUNT.tenant, 1_000)  # not a token of either model
    with pytest.raises(ServiceError) as err:
        await gate.admit(r)
    assert err.value.reason == "BUDGET_EXCEEDED"
    assert f"cannot pay for a {short}-token answer" in err.value.message, err.value.message


@pytest.mark.parametrize(("short_by", "admitted"), [(0, True), (1, False)])
async def test_a_budget_that_pays_the_max_tokens_under_the_short_answer_admits_the_request(
    short_by: int, admitted: bool
) -> None:
    """A max_tokens under ROUTER_MIN_OUTPUT_TOKENS is the short answer the budget must pay for: a budget that pays for
    exactly its 5 tokens on the chosen model (not the strong fallback, dropped) admits it, holding that; a pico-dollar
    less is refused."""
    gate, r = await routed(request(max_tokens=5))
    assert isinstance(gate.store, MemoryStore)
    cheap = REGISTRY.models[0]
    worst = worst_pico(cheap, r.limits.billed_input(cheap), 5)
    await gate.store.set_limit("tenant", ACCOUNT.tenant, worst - short_by)
    if admitted:
        await gate.admit(r)
        assert r.hold is not None and r.hold.pico == worst and [o.model.name for o in r.plan.order] == ["cheap"]
    else:
        with pytest.raises(ServiceError) as err:
            await gate.admit(r)
        assert "cannot pay for a 5-token answer" in err.value.message, err.value.message


async def test_a_cost_cap_below_any_short_answer_names_max_cost_usd() -> None:
    with pytest.raises(ServiceError) as err:
        await routed(request(max_cost_usd=str(Decimal("0.0000001"))))
    assert err.value.reason == "NO_ELIGIBLE_MODEL" and err.value.metadata == {"field": "max_cost_usd"}


@pytest.mark.parametrize("written", ["1_0", " 1 ", "\u0661", "NaN", "Infinity", "1e99999999999999999999999", "0x10"])
async def test_a_cost_cap_not_written_as_a_decimal_number_is_refused(written: str) -> None:
    """Decimal() reads '1_0' as 10, ' 1 ' as 1 and an Arabic-Indic digit as its value: a cap is refused unless it is
    written as a plain decimal number, never taken as some other amount."""
    with pytest.raises(ServiceError) as err:
        await routed(request(max_cost_usd=written))
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and err.value.metadata == {"field": "max_cost_usd"}


async def test_a_prompt_over_every_context_window_is_refused_before_routing() -> None:
    with pytest.raises(ServiceError) as err:
        await routed(request("lorem ipsum " * 100_000))
    assert err.value.reason == "CONTEXT_LENGTH_EXCEEDED"


def with_tool(description: str) -> str:
    parameters = {"type": "object", "properties": {"q": {"type": "string", "description": description}}}
    return json.dumps({"tools": [{"type": "function", "function": {"name": "look_up", "parameters": parameters}}]})


@pytest.mark.parametrize(
    ("content", "tool", "field"),
    [
        ("Hello there", "lorem ipsum " * 100_000, "tools"),  # the tools alone are over it: they are what to shorten
        ("lorem ipsum " * 100_000, "a query", "messages"),
        ("lorem ipsum " * 40_000, "lorem ipsum " * 40_000, "messages"),  # neither alone: the prompt, as OpenAI's
    ],
)
async def test_a_prompt_over_every_context_window_names_what_is_over_it(content: str, tool: str, field: str) -> None:
    """Tool definitions over every window by themselves were refused as the prompt, naming `messages`, which the
    caller could shorten to nothing and still be refused."""
    with pytest.raises(ServiceError) as err:
        await routed(request(content, passthrough_json=with_tool(tool)))
    assert (err.value.reason, err.value.metadata) == ("CONTEXT_LENGTH_EXCEEDED", {"field": field})
    assert err.value.message.startswith("the prompt is over" if field == "messages" else f"{field} alone")


@pytest.mark.parametrize(
    ("content", "tool", "field"),
    [
        ("Hello there", "lorem ipsum " * 5_000, "tools"),  # the tools alone are over the cheap model's window
        ("lorem ipsum " * 5_000, "a query", "messages"),
        ("lorem ipsum " * 2_000, "lorem ipsum " * 2_000, "messages"),  # neither alone: the prompt, as OpenAI's
    ],
)
async def test_a_prompt_that_fits_no_available_model_names_what_is_over_it(content: str, tool: str, field: str) -> None:
    """Under the largest window of the registry (strong's) but over the only available model's (cheap's), the prompt
    is refused by the policy, not by admission: tools over that window by themselves were named `messages`, which the
    caller could shorten to one word and still be refused."""
    gate = admission.Admission(SETTINGS, REGISTRY, MemoryStore(), scratch_outbox())
    limits = await gate.limits(request(content, passthrough_json=with_tool(tool)))
    options = policy.evaluate([m for m in REGISTRY.models if m.name == "cheap"], {}, limits)
    with pytest.raises(ServiceError) as err:
        await routing.planned(lambda limits: policy.plan(REGISTRY, options, limits, classified=True), limits, REGISTRY)
    assert (err.value.reason, err.value.metadata) == ("CONTEXT_LENGTH_EXCEEDED", {"field": field})
    told = "prompt of" if field == "messages" else f"{field} alone, rendered into the prompt, is over 8000 tokens"
    assert err.value.message.startswith(f"the prompt does not fit any available model: {told}")


async def test_a_prompt_over_a_smaller_window_that_a_larger_model_serves_is_not_counted_field_by_field() -> None:
    """Each field counted alone names the one over the windows in a refusal for the prompt's length (routing.planned):
    counted at admission for every prompt over the smallest window, a tool-heavy request a larger model serves was
    tokenized twice over (its admission 1.4 to 1.6 times as long)."""
    gate = admission.Admission(SETTINGS, REGISTRY, MemoryStore(), scratch_outbox())
    limits = await gate.limits(request("Hello there", passthrough_json=with_tool("lorem ipsum " * 5_000)))
    assert limits.input_tokens > 8000 and limits.fields_alone == {}  # over the cheap model's window, not counted
    plan = policy.plan(REGISTRY, policy.evaluate(REGISTRY.models, {}, limits), limits, classified=True)
    assert [o.model.name for o in plan.order] == ["strong"]


async def test_a_prompt_over_an_available_window_with_the_larger_model_ruled_out_otherwise_lists_the_reasons() -> None:
    """As README says: the largest window available is named only when every available model is too small; one ruled
    out for another reason (here the strong model, for the tools it cannot call) makes it no_eligible_model, each
    model's reason listed (the caller may drop the tools, or shorten them)."""
    without_tools = Registry.model_validate(
        {**REGISTRY.model_dump(mode="json"), "models": [
            {**m.model_dump(mode="json"), "tools": m.name != "strong"} for m in REGISTRY.models
        ]}
    )  # fmt: skip
    gate = admission.Admission(SETTINGS, without_tools, MemoryStore(), scratch_outbox())
    limits = await gate.limits(request("Hello there", passthrough_json=with_tool("lorem ipsum " * 5_000)))
    with pytest.raises(ServiceError) as err:
        policy.plan(without_tools, policy.evaluate(without_tools.models, {}, limits), limits, classified=True)
    assert err.value.reason == "NO_ELIGIBLE_MODEL"
    assert "cheap: prompt of" in err.value.message and "strong: cannot call the tools" in err.value.message


async def test_more_messages_than_the_bound_are_refused_unread() -> None:
    many = router_pb2.CompleteRequest(messages=[common_pb2.ChatMessage(role="user", content="hi")] * 30_000)
    started = time.perf_counter()
    with pytest.raises(ServiceError) as err:
        await routed(many)  # past MAX_ROUTED_MESSAGES, and over 100,000 tokens: the bound answers first
    assert (err.value.reason, err.value.metadata) == ("INVALID_REQUEST", {"field": "messages"})
    assert time.perf_counter() - started < 0.2  # unread: counting them takes about 0.6 s


async def test_messages_within_the_bound_but_over_every_context_window_are_refused_unread() -> None:
    """Under the message bound, a registry of small windows still refuses a prompt of too many messages from their
    count alone (each costs its framing), before any is read: these, read, would be refused for their content."""
    small = Registry.model_validate(
        {**REGISTRY.model_dump(mode="json", exclude_none=True), "models": [
            {**m.model_dump(mode="json", exclude_none=True), "context_window": 4096, "max_output_tokens": 1024}
            for m in REGISTRY.models
        ]}
    )  # fmt: skip
    gate = admission.Admission(SETTINGS, small, MemoryStore(), scratch_outbox())
    unread = router_pb2.CompleteRequest(messages=[common_pb2.ChatMessage(role="user", content="")] * 1100)
    with pytest.raises(ServiceError) as err:
        await gate.limits(unread)  # 1,100 messages: at least 4,403 tokens of framing, over every 4,096-token window
    assert err.value.reason == "CONTEXT_LENGTH_EXCEEDED"
    fewer = router_pb2.CompleteRequest(messages=[common_pb2.ChatMessage(role="user", content="hi")] * 800)
    assert (await gate.limits(fewer)).input_tokens <= 4096  # 4,003 tokens: it fits, and is counted


async def test_a_caller_leaving_during_admission_leaves_no_hold_and_no_pending_charge(
    redis_url: str, proxy: LossyProxy, caplog: pytest.LogCaptureFixture
) -> None:
    """The admission script may run after its caller left (it was sent, the reply never read): the hold,
    pending charge and request id it took for a request nobody serves are undone, instead of blocking the budget
    for the hold's lifetime and being charged in full by the reconciler as an unsettled pending charge."""
    store = RedisStore(proxy.url_for(redis_url))
    other = redis.from_url(redis_url)
    try:
        await store.ping()  # the connection is ready: the next reply through the proxy is the admission's
        gate, r = await routed(request(), admission.Admission(SETTINGS, REGISTRY, store, scratch_outbox()))
        held = proxy.hold_next_reply()
        admitting = asyncio.ensure_future(gate.admit(r))
        await asyncio.wait_for(held.arrived.wait(), 30)  # the admission ran; its caller has not heard back
        admitting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await admitting
        held.released.set()
        keys = AccountKeys.of(ACCOUNT)
        pending, holds = keys.pending, keys.held()
        await gate.close()  # the undo has run
        # The admission did run (other loggers may have written meanwhile: only the undo's record counts).
        assert [rec.undone for rec in caplog.records if hasattr(rec, "undone")] == [True]
        assert await other.hlen(pending) == 0
        assert [await other.zcard(key) for key in holds] == [0, 0]
        assert not await other.exists(keys.used(r.request_id))  # a retry of the request id is admitted
    finally:
        await other.aclose()
        await store.close()


async def test_a_hold_grows_no_more_once_its_key_moved_to_another_tenant(redis_url: str) -> None:
    """A fallback or escalation of a request admitted before its key's move (key_move.py) would grow the hold in the
    old tenant's shard, checked against the key's spend there alone, while the key spends under its new tenant what
    it had left, the hold at the move carried there: no growth then. A move of another key stops none."""
    store = RedisStore(redis_url)
    try:
        gate, r = await routed(request(), admission.Admission(SETTINGS, REGISTRY, store, scratch_outbox()))
        await gate.admit(r)
        assert r.hold is not None
        await store.move_key("fedcba9876543210", "another")
        assert await gate.cover(r, r.hold.pico + 1_000)
        grown = r.hold.pico
        await store.move_key(ACCOUNT.key, "another")
        assert not await gate.cover(r, grown + 1_000)
        assert r.hold.pico == grown
        held = await store.redis.zrange(AccountKeys.of(ACCOUNT).held()[1], 0, -1)
        assert [int(member.split(b":")[0]) for member in held] == [grown]
    finally:
        await store.close()


async def test_a_caller_leaving_while_the_hold_grows_leaves_no_hold_behind(redis_url: str, proxy: LossyProxy) -> None:
    """Before a fallback the hold grows (the store replaces it with a larger one). A caller that leaves while
    that runs must not make the request settle the old, smaller hold: the larger one would block the budget
    until it expires."""
    store = RedisStore(proxy.url_for(redis_url))
    other: Any = redis.from_url(redis_url)
    try:
        gate, r = await routed(request(), admission.Admission(SETTINGS, REGISTRY, store, scratch_outbox()))
        await gate.admit(r)
        assert r.hold is not None
        tenant_holds = AccountKeys.of(ACCOUNT).held()[0]
        admitted = await other.zrange(tenant_holds, 0, -1)
        await other.script_load(lua.EXTEND)  # the next reply is the growth's, not a NOSCRIPT asking for the script
        held = proxy.hold_next_reply()
        growing = asyncio.ensure_future(gate.cover(r, r.hold.pico + 1_000))
        await asyncio.wait_for(held.arrived.wait(), 30)  # the growth ran; its caller has not heard back
        growing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await growing
        assert await other.zrange(tenant_holds, 0, -1) != admitted  # the store holds the larger hold
        await store.charge(r.account, r.hold, 0, {})  # as the request settles once its caller has left
        keys = AccountKeys.of(ACCOUNT)
        assert [await other.zcard(key) for key in keys.held()] == [0, 0]
        assert not [v for v in await other.hvals(keys.pending) if SETTINGS.instance_id in v.decode()]
    finally:
        await other.aclose()
        await store.close()


@pytest.mark.parametrize(
    ("response_format", "wanted"),
    [
        ({"type": "json_object"}, "json_object"),
        ({"type": "json_schema", "json_schema": {"name": "answer"}}, "json_schema"),
        ({"type": "text"}, ""),
    ],
)
async def test_the_response_format_asked_is_a_limit(response_format: Any, wanted: str) -> None:
    gate = admission.Admission(SETTINGS, REGISTRY, MemoryStore(), scratch_outbox())
    limits = await gate.limits(request(passthrough_json=json.dumps({"response_format": response_format})))
    assert limits.response_format == wanted


@pytest.mark.parametrize("response_format", [{"type": "xml"}, "json_object", {}])
async def test_a_response_format_of_no_known_type_is_refused_naming_it(response_format: Any) -> None:
    """A gRPC caller's too: the edge checks it, and an unknown type would be routed as if any model honoured it."""
    gate = admission.Admission(SETTINGS, REGISTRY, MemoryStore(), scratch_outbox())
    with pytest.raises(ServiceError) as err:
        await gate.limits(request(passthrough_json=json.dumps({"response_format": response_format})))
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and err.value.metadata == {"field": "response_format"}


@pytest.mark.parametrize("written", ['{"temperature": NaN}', '{"a": {"b": [Infinity]}}', '{"seed": -Infinity}'])
async def test_a_passthrough_with_nan_or_infinity_is_refused_as_no_json(written: str) -> None:
    """Python's json reads NaN and Infinity, and writes them again: sent on, they are no JSON for the provider."""
    gate = admission.Admission(SETTINGS, REGISTRY, MemoryStore(), scratch_outbox())
    with pytest.raises(ServiceError) as err:
        await gate.limits(request(passthrough_json=written))
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and err.value.metadata == {"field": "passthrough_json"}


@pytest.mark.parametrize("fields", [{"top_logprobs": 2}, {"top_logprobs": 0, "logprobs": False}])
async def test_top_logprobs_without_logprobs_is_refused_naming_it(fields: dict[str, Any]) -> None:
    """A gRPC caller's too, as OpenAI and the edge refuse it: routed as a logprobs request or not, it would be sent
    to a provider as it is (Groq refuses top_logprobs with a 400, whatever logprobs says)."""
    gate = admission.Admission(SETTINGS, REGISTRY, MemoryStore(), scratch_outbox())
    with pytest.raises(ServiceError) as err:
        await gate.limits(request(passthrough_json=json.dumps(fields)))
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and err.value.metadata == {"field": "top_logprobs"}
    assert "logprobs must be set to true" in err.value.message


@pytest.mark.parametrize(
    ("fields", "wanted"),
    [
        ({"logprobs": True}, True),
        ({"logprobs": True, "top_logprobs": 3}, True),
        ({"logprobs": True, "top_logprobs": 0}, True),
        ({"logprobs": False}, False),
        ({"logprobs": None, "top_logprobs": None}, False),
        ({}, False),
    ],
)
async def test_the_logprobs_asked_are_a_limit(fields: dict[str, Any], wanted: bool) -> None:
    gate = admission.Admission(SETTINGS, REGISTRY, MemoryStore(), scratch_outbox())
    limits = await gate.limits(request(passthrough_json=json.dumps(fields)))
    assert limits.needs_logprobs is wanted


@pytest.mark.parametrize(
    "beside",
    [
        # As many stop sequences as long as they may be (~400 tokens written): no model reads them as prompt
        {"stop": [("word " * MAX_STOP_CHARS)[:MAX_STOP_CHARS]] * MAX_STOP},
        {name: "u" * bound for name, bound in END_USER_ID_CHARS.items()},  # each as long as it may be
        {"seed": 7, "top_p": 0.5, "presence_penalty": 1, "frequency_penalty": -1, "logprobs": True, "top_logprobs": 5},
    ],
    ids=["stop", "end-user ids", "sampling"],
)
async def test_the_fields_read_beside_the_prompt_are_not_counted_as_its_input(beside: dict[str, Any]) -> None:
    """A provider bills its input for the prompt it renders: the messages, tool definitions, the response format. A
    stop sequence or an end-user id counted as prompt made a short prompt a CONTEXT_LENGTH_EXCEEDED (before
    stop sequences were bounded) or multiplied its hold."""
    gate = admission.Admission(SETTINGS, REGISTRY, MemoryStore(), scratch_outbox())
    tools = {"tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]}
    alone = await gate.limits(request(passthrough_json=json.dumps(tools)))
    limits = await gate.limits(request(passthrough_json=json.dumps({**tools, **beside})))
    assert limits.input_tokens == alone.input_tokens
    assert limits.input_bound == alone.input_bound
    assert alone.input_tokens > (await gate.limits(request())).input_tokens  # the tools are counted


async def test_a_caller_leaving_while_a_bug_reads_the_admissions_reply_leaves_no_hold(redis_url: str) -> None:
    """The caller left during the admission, then reading the store's reply failed by a bug: its outcome unknown as
    a lost reply's, the admission is undone, not left held for the reconciler to charge whole, nothing served."""
    store = RedisStore(redis_url)
    other = redis.from_url(redis_url)
    admit, reached, go_on = store.admit, asyncio.Event(), asyncio.Event()

    async def held_then_a_bug(*args: Any, **kwargs: Any) -> Any:
        await admit(*args, **kwargs)
        reached.set()
        await go_on.wait()
        raise RuntimeError("a bug reading the store's reply")

    store.admit = held_then_a_bug  # type: ignore[method-assign]
    try:
        gate, r = await routed(request(), admission.Admission(SETTINGS, REGISTRY, store, scratch_outbox()))
        admitting = asyncio.ensure_future(gate.admit(r))
        await asyncio.wait_for(reached.wait(), 30)
        admitting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await admitting
        go_on.set()
        await gate.close()  # the undo has run
        keys = AccountKeys.of(ACCOUNT)
        assert await other.hlen(keys.pending) == 0
        assert [await other.zcard(key) for key in keys.held()] == [0, 0]
        assert not await other.exists(keys.used(r.request_id))
    finally:
        await other.aclose()
        await store.close()
