"""The shipped registry with every provider available (dummy keys, fake OpenAI-compatible and Anthropic
upstreams on loopback, the local model as built), the real classifier and router at their defaults:
how prompts from trivial to expert are routed (tests/router/behaviour/prompts.jsonl, written for this test),
and strong-share routing on the reference mix the calibration was built from."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from llmrouter.registry import DEFAULT_REGISTRY, Registry, load_registry
from llmrouter.v1 import common_pb2, router_pb2, router_pb2_grpc
from services.classifier.calibrate import build, reference_prompts
from services.classifier.training.data import data_dir
from tests.conftest import ROOT
from tests.fakes import FakeAnthropic, FakeOpenAI
from tests.integration.conftest import served_stack

BEHAVIOUR = ROOT / "tests" / "router" / "behaviour" / "prompts.jsonl"
PREMIUM = "premium"
REFERENCE_PER_FILE = 12  # 60 reference prompts: quick to score, enough to see the share move
# Known to miss it, measured at the default target (share of each label sent to the premium tier): the first shipped
# classifier (edcc947f) trivial 19%, expert 44%; the leave-one-task-out one (51eb04f1) trivial 50%, expert 69%; no
# target separates them for either; the static-embedding one (a18057c0) trivial 38%, expert 81%. The length-leaning
# 256-token one (1bd8a831, LENGTH_WEIGHT 0.5): trivial 0%, expert 44%; the length-leaning static one (4b151f36,
# LENGTH_WEIGHT 0.5): trivial 0% (passes), expert 0%; with one slope per file (ee2ffa93) the same. The trivial half
# has passed with every length-leaning classifier since, as the README says it does, so it is an ordinary test: a
# classifier or policy that sends cheap prompts to premium fails it. The expert half stands and runs on every build;
# until a classifier passes it, it is reported as an expected failure (an XPASS in the output says one now does). The
# exact version cannot be named here: a retrain on another machine may differ in its last bits. No default or rule over
# the predictions can pass it while the classifier misorders the set: every prediction is a function of one difficulty,
# and with ee2ffa93 the expert prompt predicted easiest is predicted easier than four trivial ones
# (services/classifier/README.md, the policy over these predictions).
KNOWN_SHORT = pytest.mark.xfail(
    reason="the shipped classifier cannot tell these prompts apart; the policy cannot make up for it", strict=False
)


@dataclass
class Shipped:
    stub: router_pb2_grpc.RouterStub
    registry: Registry
    reference: list[str]


def shipped_registry(openai_url: str, anthropic_url: str) -> dict:
    """config/models.yaml as shipped, every upstream pointed at a fake."""
    raw = yaml.safe_load(DEFAULT_REGISTRY.read_text())
    for spec in raw["providers"].values():
        if spec["kind"] != "local":
            spec["base_url"] = anthropic_url if spec["kind"] == "anthropic" else openai_url
    return raw


@pytest.fixture(scope="module")
async def shipped(
    tmp_path_factory: pytest.TempPathFactory, classifier_dir: Path, session_redis_url: str
) -> AsyncIterator[Shipped]:
    tmp = tmp_path_factory.mktemp("shipped")
    with FakeOpenAI() as openai_fake, FakeAnthropic() as anthropic_fake, pytest.MonkeyPatch.context() as env:
        registry = shipped_registry(openai_fake.base_url, anthropic_fake.base_url)
        for spec in registry["providers"].values():
            if "api_key_env" in spec:
                env.setenv(spec["api_key_env"], "dummy-key")
        path = tmp / "models.yaml"
        path.write_text(yaml.safe_dump(registry))
        mix = reference_prompts(data_dir(), REFERENCE_PER_FILE, seed=0)
        calibration = tmp / "calibration.json"
        calibration.write_text(json.dumps(build(classifier_dir, data_dir(), REFERENCE_PER_FILE, seed=0)))
        async with (
            served_stack(
                path,
                session_redis_url,
                classifier_dir,
                classifier_timeout_s=10.0,  # a loaded CI machine
                calibration_path=calibration,
            ) as servers,
            grpc.aio.insecure_channel(f"127.0.0.1:{servers['router'].port}") as channel,
        ):
            stub = router_pb2_grpc.RouterStub(channel)
            yield Shipped(stub, load_registry(path), [p for texts in mix.values() for p in texts])


async def decide(stub: router_pb2_grpc.RouterStub, prompt: str, **fields: Any) -> router_pb2.Decision:
    message = common_pb2.ChatMessage(role="user", content=prompt)
    return await stub.Decide(router_pb2.CompleteRequest(messages=[message], **fields), timeout=30)


def tier(shipped: Shipped, decision: router_pb2.Decision) -> str:
    model = shipped.registry.get(decision.model)
    assert model is not None
    return model.tier


@pytest.fixture(scope="module")
async def premium_rates(shipped: Shipped) -> dict[str, float]:
    """Per label, the share of the behaviour set's prompts the router sends to the premium tier."""
    rows = [json.loads(line) for line in BEHAVIOUR.read_text().splitlines() if line.strip()]
    decisions = [await decide(shipped.stub, row["prompt"]) for row in rows]
    available = {c.model for c in decisions[0].candidates if c.eligible}
    assert available == {m.name for m in shipped.registry.models}  # every provider is available
    rates = {}
    for label in ("trivial", "moderate", "expert"):
        tiers = [tier(shipped, d) for row, d in zip(rows, decisions, strict=True) if row["label"] == label]
        rates[label] = sum(t == PREMIUM for t in tiers) / len(tiers)
    print(f"premium-tier share by label: {rates}")
    return rates


def test_the_behaviour_set_spans_trivial_to_expert() -> None:
    labels = [json.loads(line)["label"] for line in BEHAVIOUR.read_text().splitlines() if line.strip()]
    assert len(labels) >= 40
    assert {label: labels.count(label) for label in set(labels)} == {"trivial": 16, "moderate": 16, "expert": 16}


async def test_trivial_prompts_stay_off_the_premium_tier(premium_rates: dict[str, float]) -> None:
    assert premium_rates["trivial"] <= 0.05


@KNOWN_SHORT
async def test_expert_prompts_reach_the_premium_tier(premium_rates: dict[str, float]) -> None:
    assert premium_rates["expert"] >= 0.95


@pytest.mark.parametrize("share", [0.2, 0.5])
async def test_a_strong_share_sends_that_share_of_the_reference_mix_to_the_premium_tier(
    shipped: Shipped, share: float
) -> None:
    decisions = await asyncio.gather(*(decide(shipped.stub, p, strong_share=share) for p in shipped.reference))
    strong = sum(tier(shipped, d) == PREMIUM for d in decisions)
    # The same prompts the calibration scored; one may sit on the threshold after rounding to 3 decimals.
    assert abs(strong - math.ceil(share * len(decisions))) <= 1
    assert f"strong share {share:.2f} on the reference mix" in decisions[0].reason
    assert len({d.quality_target for d in decisions}) == 1 and 0 < decisions[0].quality_target < 1


@pytest.mark.parametrize("kept", [0.9, 0.97])
async def test_a_quality_kept_keeps_that_share_of_the_best_predicted_quality_on_the_reference_mix(
    shipped: Shipped, kept: float
) -> None:
    decisions = await asyncio.gather(*(decide(shipped.stub, p, quality_kept=kept) for p in shipped.reference))
    chosen = best = 0.0
    for d in decisions:
        predicted = {c.model: c.predicted_quality for c in d.candidates if c.eligible}
        chosen, best = chosen + predicted[d.model], best + max(predicted.values())
    # The calibration's scores are rounded to 3 decimals, the Decide's are not: a prompt may sit on the threshold.
    assert kept - 0.005 <= chosen / best < 1
    assert f"quality kept {kept:.2f} on the reference mix" in decisions[0].reason
    assert len({d.quality_target for d in decisions}) == 1 and 0 < decisions[0].quality_target < 1


async def test_a_longer_version_of_a_prompt_never_goes_to_a_weaker_tier(shipped: Shipped) -> None:
    """Difficulty rises with length (the lean), and the models' curves never cross: the same request padded with more
    of its document is routed to the same tier or a stronger one, never down to the cheapest model."""
    sentence = "Please summarise the following report about quarterly sales and the outlook for next year. "
    ranks = []
    for repeats in (1, 10, 100, 1000, 3000):  # 90 characters to 270,000 (about 50,000 tokens)
        decision = await decide(shipped.stub, sentence * repeats)
        ranks.append(shipped.registry.tier_rank(shipped.registry.get(decision.model)))  # type: ignore[arg-type]
    assert ranks == sorted(ranks), ranks
