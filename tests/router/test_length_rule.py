"""The length rule's calibration (services/router/length_rule.py): on the shipped reference mix, the share of prompts
it sends each tier is the share the classifier's predictions send there through the policy, at the default target
and at a strong share, within one prompt; thresholds split prompts of one size to the nearer side."""

from __future__ import annotations

import asyncio
import re
from collections import Counter

import pytest

from llmrouter.registry import ModelSpec, load_registry
from llmrouter.v1 import router_pb2
from services.router import policy
from services.router.calibration import Calibration
from services.router.length_rule import LengthRule, thresholds
from services.router.settings import RouterSettings
from services.router.targets import Targets
from services.router.unclassified import Unclassified
from tests.conftest import ROOT
from tests.router.test_policy import limits

REGISTRY = load_registry()
OUTPUT_TOKENS = RouterSettings().expected_output_tokens
SERVED = {"gpt-4o-mini", "gpt-4o", "claude-3-5-haiku", "claude-sonnet-4"}  # OpenAI's and Anthropic's keys alone


@pytest.fixture(scope="module")
def reference() -> Calibration:
    path = ROOT / "artefacts" / "classifier" / "calibration.json"
    if not path.is_file():
        pytest.fail("artefacts/classifier/calibration.json is missing: `make setup` (or make calibrate) builds it")
    return Calibration.read(path)


def classifier_tiers(reference: Calibration, models: list[ModelSpec], target: float) -> Counter[str]:
    """The tier policy.plan picks for each reference prompt from the classifier's scores at `target`."""
    assert reference.input_tokens is not None
    picked: Counter[str] = Counter()
    for row, tokens in zip(reference.scores, reference.input_tokens, strict=True):
        scores = dict(zip(reference.models, row, strict=True))
        lim = limits(quality_target=target, input_tokens=tokens, expected_output_tokens=OUTPUT_TOKENS)
        plan = policy.plan(REGISTRY, policy.evaluate(models, scores, lim), lim, classified=True)
        picked[plan.order[0].model.tier] += 1
    return picked


async def length_tiers(reference: Calibration, models: list[ModelSpec], target: float) -> Counter[str]:
    assert reference.input_tokens is not None
    tiers = await LengthRule(reference).tiers(target, models, REGISTRY, OUTPUT_TOKENS)
    return Counter(tiers.tier_for(tokens)[0] for tokens in reference.input_tokens)


@pytest.mark.parametrize("served", [None, SERVED], ids=["every model", "openai and anthropic"])
async def test_each_tiers_share_is_the_classifiers_at_the_default_target(
    reference: Calibration, served: set[str] | None
) -> None:
    models = [m for m in REGISTRY.models if served is None or m.name in served]
    target = RouterSettings().default_quality_target
    by_classifier = classifier_tiers(reference, models, target)
    by_length = await length_tiers(reference, models, target)
    assert by_classifier["premium"] > 0  # the strong share is no trivial 0
    for tier in REGISTRY.tiers:
        assert abs(by_length[tier] - by_classifier[tier]) <= 1, (tier, by_length, by_classifier)


async def test_a_strong_share_is_kept_without_the_classifier(reference: Calibration) -> None:
    settings = RouterSettings()
    aimed = router_pb2.CompleteRequest(strong_share=0.2)
    target = await Targets(settings, reference).reference(aimed, "acme", REGISTRY.models, REGISTRY)
    assert target.note == "strong share 0.20 on the reference mix"
    by_classifier = classifier_tiers(reference, REGISTRY.models, target.quality)
    by_length = await length_tiers(reference, REGISTRY.models, target.quality)
    assert abs(by_length["premium"] - by_classifier["premium"]) <= 1
    assert by_length["premium"] / len(reference.scores) == pytest.approx(0.2, abs=0.01)


def test_prompts_of_one_size_go_to_the_nearer_side() -> None:
    tokens = [10, 20, 20, 20, 30, 40]
    # Four to the weaker tier: the three of 20 tokens go with it (4 below, off by none).
    assert thresholds([4, 2], tokens, ["a", "b"]).starts == [0, 30]
    # Two to the weaker tier: of the 20-token prompts none (1 below, off by one) rather than all (4, off by two).
    assert thresholds([2, 4], tokens, ["a", "b"]).starts == [0, 20]
    # Three: one either way, the weaker side taking them (cheaper).
    split = thresholds([3, 3], tokens, ["a", "b"])
    assert split.starts == [0, 21] and split.shares == [4 / 6, 2 / 6]
    assert split.tier_for(20)[0] == "a" and split.tier_for(21)[0] == "b"
    # A tier of no prompts gets no range; one of them all gets every length.
    assert thresholds([0, 6, 0], tokens, ["a", "b", "c"]).tiers == ["b"]
    assert thresholds([0, 6, 0], tokens, ["a", "b", "c"]).tier_for(10**6)[0] == "b"


async def test_a_prompts_tier_among_the_models_available_and_with_every_provider(reference: Calibration) -> None:
    settings = RouterSettings()
    rule = Unclassified("length", reference, Targets(settings, reference), OUTPUT_TOKENS)
    served = [m for m in REGISTRY.models if m.name in SERVED]
    short = "What is the capital of France?"  # 14 tokens: the economy tier's, with every provider
    fallback, ideal, target = await rule.fallback(router_pb2.CompleteRequest(), "acme", short, served, REGISTRY)
    assert target is not None and target.quality == settings.default_quality_target
    assert (fallback.tier, ideal.tier) == ("standard", "economy")
    # The figures come from this build's reference mix (a retrained classifier moves them by a token or so).
    economy = re.fullmatch(
        r"length rule, a prompt of 14 tokens: standard \(0 to (\d+) tokens, ([\d.]+)% of the reference mix\) "
        r"as the classifier at target 0\.85",
        fallback.why,
    )
    assert economy, fallback.why
    long = "word " * 600
    fallback, ideal, _ = await rule.fallback(router_pb2.CompleteRequest(), "acme", long, served, REGISTRY)
    assert (fallback.tier, ideal.tier) == ("premium", "premium")
    # The strongest tier's range has no end: it reads so, not "(544 to more tokens".
    premium = re.fullmatch(
        r"length rule, a prompt of 608 tokens: premium \((\d+) tokens or more, ([\d.]+)% of the reference mix\) "
        r"as the classifier at target 0\.85",
        fallback.why,
    )
    assert premium, fallback.why
    # The two ranges meet, and the two tiers share the whole mix.
    assert int(premium[1]) == int(economy[1]) + 1
    assert float(economy[2]) + float(premium[2]) == pytest.approx(100, abs=0.1)
    aimed = router_pb2.CompleteRequest(quality_target=0.95)  # the request's own target moves the thresholds
    fallback, _, target = await rule.fallback(aimed, "acme", "word " * 60, served, REGISTRY)
    assert target is not None and target.quality == pytest.approx(0.95) and fallback.tier == "premium"


async def test_a_model_set_first_seen_is_built_off_the_event_loop_once_for_every_request(
    reference: Calibration,
) -> None:
    # A provider down while the classifier is: the models available are a set the start did not build for.
    rule = Unclassified("length", reference, Targets(RouterSettings(), reference), OUTPUT_TOKENS)
    rule.warm(REGISTRY)
    served = [m for m in REGISTRY.models if m.name in SERVED]
    assert rule.length is not None
    waiting = [
        asyncio.ensure_future(rule.fallback(router_pb2.CompleteRequest(), "acme", "hi", served, REGISTRY))
        for _ in range(20)
    ]
    leaving = asyncio.ensure_future(rule.fallback(router_pb2.CompleteRequest(), "acme", "hi", served, REGISTRY))
    await asyncio.sleep(0)
    # The build is under way in a thread: the event loop runs this, and the requests wait for it.
    assert not any(task.done() for task in waiting)
    assert rule.length._curves.building == 1
    leaving.cancel()  # a caller leaving stops no one else's build
    answers = await asyncio.gather(*waiting)
    assert {fallback.tier for fallback, _, _ in answers} == {"standard"}
    assert len(rule.length._curves) == 2 and not rule.length._curves.building  # every registry model, and these


async def test_a_prompt_of_megabytes_is_counted_only_past_the_longest_reference_prompt(reference: Calibration) -> None:
    # Every threshold is passed there: counting further (the tokenizer on megabytes, on the event loop) tells nothing.
    rule = Unclassified("length", reference, Targets(RouterSettings(), reference), OUTPUT_TOKENS)
    rule.warm(REGISTRY)
    assert reference.input_tokens is not None
    huge = "x" * 4_000_000  # no space in it: the tokenizer's slowest text
    fallback, ideal, _ = await rule.fallback(router_pb2.CompleteRequest(), "acme", huge, REGISTRY.models, REGISTRY)
    assert (fallback.tier, ideal.tier) == ("premium", "premium")
    counted = int(fallback.why.split("a prompt of ")[1].split(" tokens")[0])
    assert max(reference.input_tokens) < counted < max(reference.input_tokens) + 4096


async def test_a_requests_strong_share_sets_the_length_rules_target(reference: Calibration) -> None:
    # No classifier answered, so none says which version scored it: the calibration is taken as the deployed one's.
    settings = RouterSettings()
    rule = Unclassified("length", reference, Targets(settings, reference), OUTPUT_TOKENS)
    aimed = router_pb2.CompleteRequest(strong_share=0.2)
    _, _, target = await rule.fallback(aimed, "acme", "hi", REGISTRY.models, REGISTRY)
    assert target is not None and target.note == "strong share 0.20 on the reference mix"
    assert target == await Targets(settings, reference).reference(aimed, "acme", REGISTRY.models, REGISTRY)
    assert target.quality != settings.default_quality_target


async def test_the_tier_with_every_provider_is_at_the_target_a_strong_share_gives_every_model(
    reference: Calibration,
) -> None:
    # A strong share is a target for a model set: the local model alone gives one, every registry model another.
    settings = RouterSettings()
    targets = Targets(settings, reference)
    rule = Unclassified("length", reference, targets, OUTPUT_TOKENS)
    local = [m for m in REGISTRY.models if m.provider == "local"]
    aimed = router_pb2.CompleteRequest(strong_share=0.2)
    served_target = await targets.reference(aimed, "acme", local, REGISTRY)
    every_target = await targets.reference(aimed, "acme", REGISTRY.models, REGISTRY)
    assert f"{served_target.quality:.2f}" != f"{every_target.quality:.2f}"
    _, ideal, target = await rule.fallback(aimed, "acme", "word " * 60, local, REGISTRY)
    assert target == served_target  # what the request is routed at, among the models served
    assert ideal.why.endswith(f"as the classifier at target {every_target.quality:.2f}"), ideal.why
