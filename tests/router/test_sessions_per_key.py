"""Session affinity is per API key: a session id names one conversation of one key of a tenant. Sessions were kept
per tenant, so another key of the tenant naming the same session id (a guess, a leaked id, or a shared client
library's fixed id) had its turn pinned to the colleague's session model (told so in its decision: that session's
model and turn count), and its turn recorded in that session, moving or prolonging it. Now each key's session id is
its own session; keyless requests (no API keys configured: one anonymous caller per tenant) keep the per-tenant
session they had, under the key they had. The router behind its own gRPC server, real providers and classifier
gRPC servers on loopback, over the Redis money store."""

from __future__ import annotations

from pathlib import Path

from services.router.sessions import session_key
from services.router.store import RedisStore, key_id
from tests.router.servicer_kit import NearScores, router_stub
from tests.router.test_session_budget import Answering, turn

ALICE, BOB = "a1a1a1a1a1a1a1a1", "b2b2b2b2b2b2b2b2"  # two API keys of acme, by their ids (as the edge sends them)


async def test_one_keys_session_is_neither_read_nor_changed_by_another_key(
    tmp_path: Path, redis_store: RedisStore
) -> None:
    async with router_stub(tmp_path, redis_store, Answering(), classifier=NearScores(), session_ttl_s=600) as router:
        hard = await router.Complete(turn(quality_target=1, api_key_id=ALICE), timeout=10)
        assert hard.model == "strong"  # alice's session is on the strong model
        easy = await router.Complete(turn(quality_target=0.5, api_key_id=ALICE), timeout=10)
        assert easy.model == "strong" and easy.decision.session_affinity  # and stays there: the premise

        other = await router.Complete(turn(quality_target=0.5, api_key_id=BOB), timeout=10)
        assert other.model == "cheap" and not other.decision.session_affinity  # bob's own session, a new one
        assert "session affinity" not in other.decision.reason

        again = await router.Complete(turn(quality_target=0.5, api_key_id=ALICE), timeout=10)
        assert again.model == "strong" and again.decision.session_affinity
        assert "(turn 3;" in again.decision.reason  # bob's turn was not counted in alice's session
        bobs = await router.Complete(turn(quality_target=0.5, api_key_id=BOB), timeout=10)
        assert bobs.model == "cheap" and "(turn 2;" not in bobs.decision.reason  # his session is on cheap: no affinity


def test_keyless_sessions_keep_their_key_and_keyed_ones_are_apart() -> None:
    """A keyless request's session is where it was (a rolling upgrade keeps those sessions); a keyed request's is
    its key's own, under a name neither the tenant's keyless sessions nor another key's can take."""
    keyless = session_key("acme", "chat-1")
    assert session_key("acme", "chat-1", key_id("")) == keyless
    keyed = {session_key("acme", "chat-1", key) for key in (ALICE, BOB)}
    assert len(keyed) == 2 and keyless not in keyed
    # No session id or tenant spells another key's session.
    assert session_key("acme", f"{BOB}\0chat-1") not in keyed
    assert session_key("acme", "chat-1", f"{BOB}\0") not in keyed
