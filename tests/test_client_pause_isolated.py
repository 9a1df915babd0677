"""A test that pauses Redis's clients (CLIENT PAUSE) does it on a redis-server of its own. A pause, and CLIENT
UNPAUSE, hold for the whole server: on the shared TEST_REDIS_URL server a pause stalls the other xdist worker's tests
for its length, and one test's UNPAUSE ends another's pause half-way; either flakes a test that never paused."""

from __future__ import annotations

import re

from tests.conftest import ROOT

PAUSING = re.compile(r"""["']CLIENT["']\s*,\s*["']PAUSE["']""")
# What gives a test a server of its own: the fixture, or a RedisServer it starts.
OWN_SERVER = ("pausable_redis_url", "RedisServer(")


def test_every_test_that_pauses_redis_pauses_a_server_of_its_own() -> None:
    pausing = [path for path in (ROOT / "tests").rglob("test_*.py") if PAUSING.search(path.read_text())]
    assert pausing, "no test pauses Redis: this check looks for the wrong words"
    shared = [str(path.relative_to(ROOT)) for path in pausing if not any(s in path.read_text() for s in OWN_SERVER)]
    assert shared == [], "CLIENT PAUSE on the shared Redis server: give these tests pausable_redis_url"
