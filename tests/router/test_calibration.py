"""Strong share to quality target: on a reference mix, the target routes the requested share of prompts to
the strongest tier through the real policy; which target a request gets; bounded tenant labels."""

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from llmrouter.registry import ModelSpec, Registry
from llmrouter.v1 import router_pb2
from services import router
from services.router import calibration, policy
from services.router.calibration import Calibration, CalibrationError
from services.router.metrics import BoundedLabels
from services.router.settings import RouterSettings
from services.router.targets import Targets
from tests.router.test_policy import REGISTRY, limits

# weak/big ratios 0.5, 0.6, 0.7, 0.8, 0.9 and one prompt where the weak model is predicted best.
ROWS = [[0.4, 0.8], [0.3, 0.5], [0.7, 1.0], [0.4, 0.5], [0.81, 0.9], [0.9, 0.6]]
REFERENCE = Calibration("v1", ["weak", "big"], ROWS)


def strong_calls(target: float) -> int:
    """How many reference prompts the real policy sends to the premium model at this target."""
    lim = limits(quality_target=target)
    options = [policy.evaluate(REGISTRY.models, dict(zip(["weak", "big"], row, strict=True)), lim) for row in ROWS]
    plans = [policy.plan(REGISTRY, o, lim, classified=True) for o in options]
    return sum(p.order[0].model.name == "strong" for p in plans)


@pytest.mark.parametrize(("share", "calls"), [(0, 0), (0.1, 1), (1 / 6, 1), (0.34, 3), (0.5, 3), (0.8, 5)])
async def test_the_target_sends_the_requested_share_of_the_reference_mix_to_the_strong_tier(
    share: float, calls: int
) -> None:
    target = await REFERENCE.quality_target(share, REGISTRY.models, REGISTRY)
    assert strong_calls(target) == calls


async def test_the_target_sits_halfway_between_reference_prompts() -> None:
    assert await REFERENCE.quality_target(0.3, REGISTRY.models, REGISTRY) == pytest.approx(0.65)  # between 0.6 and 0.7
    assert await REFERENCE.quality_target(0.0, REGISTRY.models, REGISTRY) == 0.0


async def test_a_share_beyond_reach_is_the_highest_target() -> None:
    """On one prompt the weak model is predicted best: no target sends it to the strong tier."""
    assert await REFERENCE.quality_target(1.0, REGISTRY.models, REGISTRY) == 1.0
    assert strong_calls(1.0) == 5


async def test_with_one_tier_available_everything_is_the_strong_tier() -> None:
    strong_only = [m for m in REGISTRY.models if m.name == "strong"]
    assert await REFERENCE.quality_target(0.5, strong_only, REGISTRY) == 0.0


def test_calibration_file_round_trip_and_bad_files(tmp_path: Path) -> None:
    path = tmp_path / "calibration.json"
    assert calibration.load(path) is None  # never built
    path.write_text(json.dumps({"classifier_version": "v1", "models": ["weak", "big"], "scores": ROWS}))
    loaded = calibration.load(path)
    assert loaded is not None and loaded.classifier_version == "v1" and loaded.scores == ROWS
    path.write_text("{not json")
    with pytest.raises(CalibrationError, match="unreadable"):
        calibration.load(path)
    path.write_text(json.dumps({"classifier_version": "v1", "models": ["weak", "big"], "scores": [[0.1]]}))
    with pytest.raises(CalibrationError, match="rows of 2 scores"):
        calibration.load(path)


def request(**fields: Any) -> router_pb2.CompleteRequest:
    return router_pb2.CompleteRequest(**fields)


async def test_which_target_a_request_gets() -> None:
    settings = RouterSettings(default_quality_target=0.8, tenant_strong_share={"acme": 0.5})
    targets = Targets(settings, REFERENCE)
    choose = targets.choose
    models = REGISTRY.models
    own_target = await choose(request(quality_target=0.3), "acme", models, REGISTRY, "v1")
    assert own_target.quality == 0.3  # the request's own target
    own = await choose(request(strong_share=0.3), "acme", models, REGISTRY, "v1")
    assert own.quality == pytest.approx(0.65) and own.note == "strong share 0.30 on the reference mix"
    assert (await choose(request(), "acme", models, REGISTRY, "v1")).quality == pytest.approx(
        0.75
    )  # the tenant's share
    assert (await choose(request(), "other", models, REGISTRY, "v1")).quality == 0.8  # the default target
    with_default = Targets(RouterSettings(default_strong_share=0.1), REFERENCE)
    assert (await with_default.choose(request(), "other", models, REGISTRY, "v1")).quality == pytest.approx(0.55)


async def test_a_strong_share_needs_the_calibration_of_the_classifier_that_scored() -> None:
    settings = RouterSettings(default_quality_target=0.8)
    stale = await Targets(settings, REFERENCE).choose(request(strong_share=0.3), "t", REGISTRY.models, REGISTRY, "v2")
    assert stale.quality == 0.8 and "not calibrated for this classifier" in stale.note
    missing = await Targets(settings, None).choose(request(strong_share=0.3), "t", REGISTRY.models, REGISTRY, "v1")
    assert missing.quality == 0.8 and "not calibrated" in missing.note


def test_tenant_labels_stay_bounded() -> None:
    labels = BoundedLabels(2)
    assert [labels.label(t) for t in ("a", "b", "c", "a", "other", "d")] == ["a", "b", "other", "a", "other", "other"]
    assert BoundedLabels(0).label("a") == "other"


def test_tenant_strong_shares_come_from_a_json_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTER_TENANT_STRONG_SHARE", '{"acme": 0.2}')
    assert RouterSettings().tenant_strong_share == {"acme": 0.2}
    monkeypatch.setenv("ROUTER_TENANT_STRONG_SHARE", '{"acme": 2}')
    with pytest.raises(ValidationError, match="less than or equal to 1"):
        RouterSettings()


async def test_a_corrupt_calibration_file_stops_the_router_with_a_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "calibration.json"
    path.write_text('{"classifier_version": "v1"}')
    with pytest.raises(SystemExit, match=f"router: unreadable calibration file {path}"):
        await router.build(RouterSettings(calibration_path=path))


# The same mix with each prompt's size: what ranks the models by cost when a quality to keep becomes a target.
TOKENS = [120, 40, 900, 15, 300, 60]
SIZED = Calibration("v1", ["weak", "big"], ROWS, TOKENS)


def kept_by_policy(target: float) -> float:
    """The share of the best predicted quality the real policy keeps on the reference mix at this target."""
    kept = best = 0.0
    for row, tokens in zip(ROWS, TOKENS, strict=True):
        lim = limits(quality_target=target, input_tokens=tokens, expected_output_tokens=256)
        options = policy.evaluate(REGISTRY.models, dict(zip(["weak", "big"], row, strict=True)), lim)
        plan = policy.plan(REGISTRY, options, lim, classified=True)
        kept, best = kept + plan.order[0].quality, best + max(row)
    return kept / best


@pytest.mark.parametrize("wanted", [0.5, 0.8, 0.9, 0.95, 0.99, 1.0])
async def test_the_target_keeps_the_requested_quality_of_the_reference_mix(wanted: float) -> None:
    target = await SIZED.quality_target_keeping(wanted, REGISTRY.models, REGISTRY, 256)
    assert target is not None and kept_by_policy(target) >= wanted
    # The smallest such target: every lower ratio on the mix (where routing changes) keeps less.
    ratios = sorted({min(row) / max(row) for row in ROWS if row[0] < row[1]})
    assert all(kept_by_policy(r - 1e-9) < wanted for r in ratios if r < target)


async def test_the_kept_target_sits_halfway_between_the_ratios_where_routing_changes() -> None:
    # Kept at 0 / in (0.5, 0.6] / (0.6, 0.7] / (0.7, 0.8] / (0.8, 0.9] / (0.9, 1]: 3.51, 3.91, 4.11, 4.41, 4.51, 4.6
    # of 4.6.
    assert await SIZED.quality_target_keeping(0.7, REGISTRY.models, REGISTRY, 256) == 0.0
    assert await SIZED.quality_target_keeping(0.95, REGISTRY.models, REGISTRY, 256) == pytest.approx(0.75)
    assert await SIZED.quality_target_keeping(1.0, REGISTRY.models, REGISTRY, 256) == pytest.approx(0.95)


async def test_models_are_ranked_by_their_cost_for_each_reference_prompt() -> None:
    """A model cheap to read but dear to write is the cheaper one for long prompts only: what is kept, and so the
    target, depends on the prompts' sizes and the answer length, as the policy ranks them."""
    flip = REGISTRY.model_copy(
        update={
            "models": [
                REGISTRY.models[0].model_copy(update={"input_usd_per_mtok": 0, "output_usd_per_mtok": 100}),
                REGISTRY.models[1].model_copy(update={"input_usd_per_mtok": 10, "output_usd_per_mtok": 0}),
            ]
        }
    )
    long_prompts = Calibration("v1", ["weak", "big"], [[0.5, 1.0]], [10_000])
    short_prompts = Calibration("v1", ["weak", "big"], [[0.5, 1.0]], [10])
    # Long: the weak model is the cheaper, so half the quality is kept only at a target up to 0.5.
    assert await long_prompts.quality_target_keeping(0.5, flip.models, flip, 256) == 0.0
    assert await long_prompts.quality_target_keeping(0.9, flip.models, flip, 256) == pytest.approx(0.75)
    # Short: the strong model is the cheaper and is chosen at any target, keeping all.
    assert await short_prompts.quality_target_keeping(0.9, flip.models, flip, 256) == 0.0


async def test_which_target_a_quality_kept_gives() -> None:
    settings = RouterSettings(default_quality_target=0.8, tenant_quality_kept={"acme": 0.95})
    targets = Targets(settings, SIZED)
    models = REGISTRY.models
    own = await targets.choose(request(quality_kept=1.0), "acme", models, REGISTRY, "v1")
    assert own.quality == pytest.approx(0.95) and own.note == "quality kept 1.00 on the reference mix"
    assert (await targets.choose(request(), "acme", models, REGISTRY, "v1")).quality == pytest.approx(
        0.75
    )  # the tenant's
    assert (await targets.choose(request(quality_target=0.3), "acme", models, REGISTRY, "v1")).quality == 0.3
    assert (await targets.choose(request(), "other", models, REGISTRY, "v1")).quality == 0.8
    with_default = Targets(RouterSettings(default_quality_kept=1.0), SIZED)
    assert (await with_default.choose(request(), "other", models, REGISTRY, "v1")).quality == pytest.approx(0.95)
    # A tenant's strong share is its own aim, over the default quality kept.
    mixed = Targets(RouterSettings(default_quality_kept=1.0, tenant_strong_share={"acme": 0.1}), SIZED)
    assert (
        await mixed.choose(request(), "acme", models, REGISTRY, "v1")
    ).note == "strong share 0.10 on the reference mix"


async def test_a_quality_kept_needs_a_calibration_with_the_prompts_sizes() -> None:
    unsized = Targets(RouterSettings(default_quality_target=0.8), REFERENCE)
    target = await unsized.choose(request(quality_kept=0.9), "t", REGISTRY.models, REGISTRY, "v1")
    assert target.quality == 0.8 and "needs a calibration with the prompts' sizes (make calibrate)" in target.note


def test_one_calibrated_aim_per_tenant_and_for_the_default() -> None:
    with pytest.raises(ValidationError, match="ROUTER_DEFAULT_STRONG_SHARE or ROUTER_DEFAULT_QUALITY_KEPT, not both"):
        RouterSettings(default_strong_share=0.2, default_quality_kept=0.9)
    with pytest.raises(ValidationError, match="both ROUTER_TENANT_STRONG_SHARE and ROUTER_TENANT_QUALITY_KEPT: acme"):
        RouterSettings(tenant_strong_share={"acme": 0.2, "b": 0.1}, tenant_quality_kept={"acme": 0.9})


def test_calibration_files_carry_one_token_count_per_prompt(tmp_path: Path) -> None:
    path = tmp_path / "calibration.json"
    raw = {"classifier_version": "v1", "models": ["weak", "big"], "scores": ROWS, "input_tokens": TOKENS}
    path.write_text(json.dumps(raw))
    loaded = calibration.load(path)
    assert loaded is not None and loaded.input_tokens == TOKENS
    path.write_text(json.dumps({**raw, "input_tokens": TOKENS[:2]}))
    with pytest.raises(CalibrationError, match="a token count >= 0 per reference prompt"):
        calibration.load(path)


async def test_a_callers_many_qualities_kept_share_one_curve_per_model_set() -> None:
    """Sent by any caller, each distinct quality_kept must not cost another pass over the mix (a second of CPU per
    thousand values, on the event loop): the curve is built once per model set and prices, then read."""
    sized = Calibration("v1", ["weak", "big"], ROWS, TOKENS)
    targets = [
        await sized.quality_target_keeping(0.8 + i / 10_000, REGISTRY.models, REGISTRY, 256) for i in range(1000)
    ]
    assert len(sized._curves) == 1
    known = [t for t in targets if t is not None]
    assert len(known) == len(targets) and known == sorted(known)  # what is kept only grows with the target


class Watched(Calibration):
    """A calibration whose table builds say on which thread they ran, and wait for `go`: meanwhile the test sees what
    the event loop does."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.loop = asyncio.get_running_loop()
        self.builds: list[int] = []  # the thread of each build
        self.started = asyncio.Event()
        self.go = threading.Event()

    def _strong_ratios(self, models: list[ModelSpec], registry: Registry) -> list[float]:
        self._watch()
        return super()._strong_ratios(models, registry)

    def _kept_curve(self, models: list[ModelSpec], output_tokens: int) -> calibration.KeptCurve:
        self._watch()
        return super()._kept_curve(models, output_tokens)

    def _watch(self) -> None:
        self.builds.append(threading.get_ident())
        self.loop.call_soon_threadsafe(self.started.set)
        self.go.wait(10)  # a bound, not a synchronisation: the test sets it once it has looked


@pytest.mark.parametrize("aim", [{"strong_share": 0.3}, {"quality_kept": 0.95}])
async def test_a_model_set_first_seen_is_built_once_off_the_event_loop(aim: dict[str, float]) -> None:
    """A pass over the reference mix takes ~11 ms for the shipped one: for a model set first seen (a provider down)
    it runs in a thread, the event loop serving other requests meanwhile, once for every request waiting on it."""
    watched = Watched("v1", ["weak", "big"], ROWS, TOKENS)
    targets = Targets(RouterSettings(), watched)
    asked = [
        asyncio.ensure_future(targets.choose(request(**aim), "acme", REGISTRY.models, REGISTRY, "v1")) for _ in range(5)
    ]
    await watched.started.wait()  # the build has started in its thread; the loop runs this meanwhile
    assert not any(task.done() for task in asked)
    assert watched._ratios.building + watched._curves.building == 1
    watched.go.set()
    chosen = {(await task).quality for task in asked}
    assert watched.builds != [threading.get_ident()] and len(watched.builds) == 1
    assert len(chosen) == 1  # every request got the one table's target
    await targets.choose(request(**aim), "acme", REGISTRY.models, REGISTRY, "v1")
    assert len(watched.builds) == 1  # kept


async def test_a_model_of_unknown_quality_counts_for_nothing_as_the_policy_never_picks_it() -> None:
    """The cheapest model has no prediction (no quality_from, no prior): policy.plan never picks it at any target, so
    the mix keeps at each target what the policy's picks among the others keep."""
    mystery = REGISTRY.models[0].model_copy(
        update={"name": "mystery", "quality_from": "", "quality_prior": None, "input_usd_per_mtok": 0}
    )
    registry = REGISTRY.model_copy(update={"models": [mystery, *REGISTRY.models]})
    assert policy.predicted_quality(mystery, {"weak": 0.5, "big": 0.9}) is None
    for wanted in (0.7, 0.8, 0.95):
        target = await SIZED.quality_target_keeping(wanted, registry.models, registry, 256)
        assert target == await SIZED.quality_target_keeping(wanted, REGISTRY.models, REGISTRY, 256)


@pytest.mark.parametrize(
    "scores",
    [[["0.5", 0.4]], [[None, 0.4]], [[float("nan"), 0.4]], ["ab"], {"weak": [1, 2]}, [[True, 0.4]]],
    ids=["text", "null", "nan", "a row of text", "an object", "a boolean"],
)
def test_a_score_that_is_no_number_is_a_bad_file(tmp_path: Path, scores: object) -> None:
    # Read as is, they route the length rule's whole mix to the weakest tier, or stop the router with a TypeError.
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({"classifier_version": "v1", "models": ["weak", "big"], "scores": scores}))
    with pytest.raises(CalibrationError, match="rows of 2 scores"):
        calibration.load(path)
