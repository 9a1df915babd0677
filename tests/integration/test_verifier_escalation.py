"""The answer verifier in the router's escalation, on real parts: the classifier service serving the shipped
verifier ONNX model (with escalation thresholds beside it), the providers service, routers on Redis, and fake
OpenAI-compatible upstreams. A doubted cheap answer is asked again of the strong model and both generations are
charged; a good one is kept; a verifier that is down or late costs no escalation and fails no request."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as redis
import yaml
from prometheus_client import REGISTRY

from llmrouter.registry import load_registry
from llmrouter.server import RunningServer, start_server
from llmrouter.v1 import classifier_pb2_grpc, common_pb2, router_pb2, router_pb2_grpc
from services import classifier, providers, router
from services.classifier.model import METADATA_FILE
from services.classifier.settings import DEFAULT_VERIFIER_DIR, ClassifierSettings
from services.providers.settings import ProvidersSettings
from services.router.settings import RouterSettings
from services.router.store import Account, AccountKeys, key_id, period_id, to_pico
from services.verifier.client import verify_answer
from services.verifier.model import ARTEFACT_FILES, missing_artefacts
from services.verifier.thresholds import write_thresholds
from tests.conftest import ledger_records
from tests.fakes.fake_openai import FakeOpenAI
from tests.integration.conftest import registry

QUESTION = (
    "Which gas makes up most of Earth's atmosphere?\nA. Oxygen\nB. Nitrogen\nC. Argon\nD. Carbon dioxide\nAnswer:"
)
WEAK_CUE = "(ramble)"
GOOD_ANSWER = "Nitrogen makes up about 78% of dry air, far more than oxygen (21%). The answer is (B)."
WEAK_ANSWER = "Hmm, I'm not sure. It could be several of these, it is hard to say without more information"
# Calibrated thresholds written beside the verifier copy: the test's, so that its verdicts are read against a
# known value whatever the shipped artefact's calibration is. The shipped verifier (20be60dcc1b793af) gives the
# rambling answer about 0.03 and the good one about 0.4: each test first checks its premise.
ESCALATE_BELOW = {"auto": 0.2, "strict": 0.3}


@dataclass
class Stack:
    routers: dict[str, router_pb2_grpc.RouterStub]  # verified; verifier late; verifier down
    verifier: classifier_pb2_grpc.ClassifierStub
    cheap: FakeOpenAI
    strong: FakeOpenAI
    registry_path: Path
    redis_url: str


def cheap_reply(body: dict[str, Any]) -> str:
    return WEAK_ANSWER if WEAK_CUE in json.dumps(body.get("messages")) else GOOD_ANSWER


@pytest.fixture(scope="module")
def verifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped verifier, copied beside this test's thresholds."""
    if missing_artefacts(DEFAULT_VERIFIER_DIR):
        pytest.fail("artefacts/verifier is missing: `make train-verifier` builds it")
    out = tmp_path_factory.mktemp("verifier")
    for name in ARTEFACT_FILES:
        shutil.copy(DEFAULT_VERIFIER_DIR / name, out / name)
    version = json.loads((out / METADATA_FILE).read_text())["version"]
    write_thresholds(out, version, ESCALATE_BELOW, {"how": "fixed by the test"})
    return out


@pytest.fixture(scope="module")
async def stack(
    tmp_path_factory: pytest.TempPathFactory, classifier_dir: Path, verifier_dir: Path, session_redis_url: str
) -> AsyncIterator[Stack]:
    with FakeOpenAI(cheap_reply) as cheap, FakeOpenAI() as strong, pytest.MonkeyPatch.context() as env:
        env.setenv("BUDGETAI_KEY", "sk-budget")
        env.setenv("PREMIUMAI_KEY", "sk-premium")
        tmp = tmp_path_factory.mktemp("verifier-stack")
        path = tmp / "models.yaml"
        path.write_text(yaml.safe_dump(registry(cheap.base_url, strong.base_url)))
        servers: list[RunningServer] = []
        p_settings = ProvidersSettings(port=0, registry_path=path)
        servers.append(await start_server("providers", p_settings, *await providers.build(p_settings)))
        addr = {}
        # The second classifier service scores prompts but has no verifier to answer Verify: the verifier is down.
        for name, verifying in (("verifying", verifier_dir), ("no verifier", tmp / "no-verifier")):
            c_settings = ClassifierSettings(port=0, model_dir=classifier_dir, verifier_dir=verifying)
            servers.append(await start_server("classifier", c_settings, *await classifier.build(c_settings)))
            addr[name] = f"127.0.0.1:{servers[-1].port}"
        classifier_addr = addr["verifying"]
        variants: dict[str, dict[str, Any]] = {
            "verified": {"verifier_timeout_s": 30.0},  # a loaded CI machine may be slow: never late here
            "late": {"verifier_timeout_s": 1e-6},
            "down": {"classifier_addr": addr["no verifier"]},
        }
        channels, routers = [], {}
        for name, overrides in variants.items():
            settings = RouterSettings(
                **{
                    "port": 0,
                    "registry_path": path,
                    "classifier_addr": classifier_addr,
                    "providers_addr": f"127.0.0.1:{servers[0].port}",
                    "redis_url": session_redis_url,
                    "classifier_timeout_s": 5.0,
                    "data_dir": tmp / name,
                    "ledger_sql_sink": False,
                    "verifier_modes": ["auto", "strict"],
                    **overrides,
                }
            )
            servers.append(await start_server("router", settings, *await router.build(settings)))
            channels.append(grpc.aio.insecure_channel(f"127.0.0.1:{servers[-1].port}"))
            routers[name] = router_pb2_grpc.RouterStub(channels[-1])
        channels.append(grpc.aio.insecure_channel(classifier_addr))
        try:
            yield Stack(
                routers, classifier_pb2_grpc.ClassifierStub(channels[-1]), cheap, strong, path, session_redis_url
            )
        finally:
            for channel in channels:
                await channel.close()
            for server in reversed(servers):
                await server.stop(1)


def ask(tenant: str, weak: bool, **fields: Any) -> router_pb2.CompleteRequest:
    cue = f"{WEAK_CUE} " if weak else ""
    return router_pb2.CompleteRequest(
        # The request id keeps the response cache out of it; the prompt is the same for every call.
        messages=[common_pb2.ChatMessage(role="user", content=f"{cue}{QUESTION}")],
        tenant=tenant,
        quality_target=0,  # the cheap model first
        request_id=uuid.uuid4().hex,
        **fields,
    )


async def verdict(stack: Stack, weak: bool) -> float:
    """What the verifier says of the cheap answer, asked directly: the premise of each test."""
    prompt = ask("", weak).messages[0].content
    return (await verify_answer(stack.verifier, prompt, WEAK_ANSWER if weak else GOOD_ANSWER, 30)).good


async def charged(redis_url: str, tenant: str) -> tuple[int, list[dict[str, Any]]]:
    db = redis.from_url(redis_url)
    try:
        spend = await db.get(AccountKeys.of(Account(tenant, key_id(""))).spend(period_id("day"))[0])
        ledger = [r for r in await ledger_records(db) if r["tenant"] == tenant]
    finally:
        await db.aclose()
    return int(spend or 0), ledger


def generation_cost(stack: Stack, upstream: FakeOpenAI, model: str) -> Decimal:
    """What the upstream's last generation cost, by its exact usage."""
    usage = upstream.answer(upstream.requests[-1].json)[2]
    spec = load_registry(stack.registry_path).get(model)
    assert spec is not None
    return spec.cost_usd(usage["prompt_tokens"], usage["completion_tokens"])


def counted(outcome: str) -> float:
    return REGISTRY.get_sample_value("llmrouter_router_verifier_total", {"outcome": outcome}) or 0.0


def tenant() -> str:
    return f"verified-{uuid.uuid4().hex[:8]}"


async def test_a_doubted_answer_escalates_and_both_generations_are_charged(stack: Stack) -> None:
    good = await verdict(stack, weak=True)
    assert good < ESCALATE_BELOW["auto"]  # the premise: the real verifier doubts the rambling answer
    who, doubted, strong_calls = tenant(), counted("doubted"), len(stack.strong.requests)
    reply = await stack.routers["verified"].Complete(ask(who, weak=True), timeout=60)
    assert reply.escalated and reply.model == "strong-model" and reply.content.startswith("[strong-model]")
    assert reply.escalation_signal == f"verifier {good:.3g} < {ESCALATE_BELOW['auto']:.3g}"
    assert len(stack.strong.requests) == strong_calls + 1
    assert stack.cheap.answer(stack.cheap.requests[-1].json)[0] == WEAK_ANSWER
    expected = generation_cost(stack, stack.cheap, "cheap-model") + generation_cost(stack, stack.strong, "strong-model")
    assert Decimal(reply.cost_usd) == expected
    spend, ledger = await charged(stack.redis_url, who)
    assert spend == to_pico(expected)
    assert len(ledger) == 1 and ledger[0]["escalated"] and ledger[0]["escalation_signal"] == reply.escalation_signal
    assert Decimal(ledger[0]["cost_usd"]) == expected
    assert counted("doubted") == doubted + 1


async def test_a_good_answer_is_kept_and_only_it_is_charged(stack: Stack) -> None:
    assert await verdict(stack, weak=False) >= ESCALATE_BELOW["strict"]  # the premise, in both modes
    for mode in ("auto", "strict"):
        who, kept, strong_calls = tenant(), counted("kept"), len(stack.strong.requests)
        reply = await stack.routers["verified"].Complete(ask(who, weak=False, escalation=mode), timeout=60)
        assert not reply.escalated and reply.model == "cheap-model" and reply.content == GOOD_ANSWER
        assert reply.escalation_signal == "" and len(stack.strong.requests) == strong_calls
        assert Decimal(reply.cost_usd) == generation_cost(stack, stack.cheap, "cheap-model")
        spend, ledger = await charged(stack.redis_url, who)
        assert spend == to_pico(Decimal(reply.cost_usd)) and not ledger[0]["escalated"]
        assert counted("kept") == kept + 1


async def test_the_requests_threshold_replaces_the_calibrated_one(stack: Stack) -> None:
    good = await verdict(stack, weak=False)
    reply = await stack.routers["verified"].Complete(ask(tenant(), weak=False, verifier_threshold=1.0), timeout=60)
    assert reply.escalated and reply.escalation_signal == f"verifier {good:.3g} < 1"
    reply = await stack.routers["verified"].Complete(ask(tenant(), weak=True, verifier_threshold=0.0), timeout=60)
    assert not reply.escalated and reply.content == WEAK_ANSWER
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.routers["verified"].Complete(ask(tenant(), weak=True, verifier_threshold=2.0), timeout=60)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_escalation_off_asks_no_verifier(stack: Stack) -> None:
    before = {o: counted(o) for o in ("kept", "doubted")}
    reply = await stack.routers["verified"].Complete(ask(tenant(), weak=True, escalation="off"), timeout=60)
    assert not reply.escalated and reply.content == WEAK_ANSWER
    assert {o: counted(o) for o in before} == before


async def test_a_buffered_stream_is_verified_and_escalated(stack: Stack) -> None:
    good = await verdict(stack, weak=True)
    chunks = [c async for c in stack.routers["verified"].CompleteStream(ask(tenant(), weak=True, buffer_stream=True))]
    final = chunks[-1].final
    assert final.escalated and final.escalation_signal == f"verifier {good:.3g} < {ESCALATE_BELOW['auto']:.3g}"
    assert "".join(c.delta for c in chunks).startswith("[strong-model]")


@pytest.mark.parametrize(("variant", "outcome"), [("late", "timeout"), ("down", "unavailable")])
async def test_a_verifier_down_or_late_answers_without_escalation(stack: Stack, variant: str, outcome: str) -> None:
    who, before, strong_calls = tenant(), counted(outcome), len(stack.strong.requests)
    reply = await stack.routers[variant].Complete(ask(who, weak=True), timeout=60)
    assert not reply.escalated and reply.model == "cheap-model" and reply.content == WEAK_ANSWER
    assert len(stack.strong.requests) == strong_calls
    assert Decimal(reply.cost_usd) == generation_cost(stack, stack.cheap, "cheap-model")
    spend, ledger = await charged(stack.redis_url, who)
    assert spend == to_pico(Decimal(reply.cost_usd)) and len(ledger) == 1 and not ledger[0]["escalated"]
    assert counted(outcome) == before + 1
