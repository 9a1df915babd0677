"""The session affinity rule on plain plans: stay, move up, never down unless the session's model failed or
cannot serve the turn."""

from __future__ import annotations

from decimal import Decimal

from llmrouter.registry import load_registry
from services.router import policy
from services.router.sessions import REASON_CODE, Session, next_model, stick

REGISTRY = load_registry()


def option(name: str, excluded: str = "") -> policy.Option:
    model = REGISTRY.get(name)
    assert model is not None
    return policy.Option(model, 0.8, Decimal("0.001"), excluded)


def plan(*names: str) -> policy.Plan:
    order = [option(n) for n in names]
    return policy.Plan(order, order, "cheapest_meeting_target", "test")


def test_an_easier_turn_stays_on_the_sessions_stronger_model() -> None:
    kept = stick(plan("mixtral-8x7b", "gpt-4o"), Session("gpt-4o", turns=3), REGISTRY)
    assert kept is not None and kept.code == REASON_CODE
    assert [o.model.name for o in kept.order] == ["gpt-4o", "mixtral-8x7b"]  # the rest stay as fallbacks
    assert "turn 4" in kept.reason


def test_a_harder_turn_moves_the_session_up() -> None:
    assert stick(plan("gpt-4o", "mixtral-8x7b"), Session("mixtral-8x7b"), REGISTRY) is None


def test_without_the_classifier_the_session_keeps_its_model() -> None:
    strongest = plan("gpt-4o", "mixtral-8x7b")
    unclassified = policy.Plan(strongest.options, strongest.order, "classifier_unavailable", "no classifier")
    kept = stick(unclassified, Session("mixtral-8x7b"), REGISTRY)
    assert kept is not None and kept.order[0].model.name == "mixtral-8x7b"


def test_a_model_the_turn_cannot_use_is_not_kept() -> None:
    excluded = policy.Plan([option("gpt-4o", "too slow")], [option("mixtral-8x7b")], "x", "x")
    assert stick(excluded, Session("gpt-4o"), REGISTRY) is None
    assert stick(plan("mixtral-8x7b"), Session("gpt-4o"), REGISTRY) is None  # not available now
    assert stick(plan("mixtral-8x7b"), None, REGISTRY) is None


def test_the_session_moves_up_never_down_unless_its_model_failed() -> None:
    session = Session("gpt-4o")
    assert next_model(REGISTRY, session, "gpt-4o", "gpt-4o") == "gpt-4o"
    assert next_model(REGISTRY, session, "gpt-4o", "claude-sonnet-4") == "claude-sonnet-4"  # same tier: served
    assert next_model(REGISTRY, Session("mixtral-8x7b"), "mixtral-8x7b", "gpt-4o") == "gpt-4o"  # escalated up
    # Its model was planned first and a weaker one answered: it failed, so the session follows the answer.
    assert next_model(REGISTRY, session, "gpt-4o", "mixtral-8x7b") == "mixtral-8x7b"
    # A weaker model answered without the session's model having been tried (e.g. over a cost cap): kept.
    assert next_model(REGISTRY, session, "mixtral-8x7b", "mixtral-8x7b") == "gpt-4o"
    assert next_model(REGISTRY, None, "mixtral-8x7b", "mixtral-8x7b") == "mixtral-8x7b"
