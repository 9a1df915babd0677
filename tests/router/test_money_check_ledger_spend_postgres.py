"""`python -m services.router.money_check ledger-spend` on a PostgreSQL ledger, the one a deployment keeps: a month's
charges may be millions of rows, and the check read every row of its look-back window (of every period) into the
process to sum them, its memory growing with the traffic. The database sums them per account; the check reads one
row per account, and says what it said. Real PostgreSQL (a throwaway database), real Redis."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from services.ledger.db import LedgerDB
from services.router import money_check
from services.router.store import Account, AccountKeys, CounterRead, RedisStore, period_id
from tests.ledger.conftest import fresh_postgres

ROWS = 50_000  # of acme's key k1, today, at 3 pico each; as many of the day before, at 11
TODAY, YESTERDAY = period_id("day"), (datetime.now(UTC) - timedelta(days=1)).strftime("%Y%m%d")

# Rows as the sink writes them, made by the server: `n` rows of (tenant, key id, period, pico), charged `age_s` ago.
ROWS_SQL = """
INSERT INTO requests (tenant, request_id, key_id, session_id, ts, model, provider, reason, reason_detail, candidates,
  input_tokens, output_tokens, tokens_estimated, cost_pico, baseline_pico, latency_ms, cache_hit, escalated, retries,
  fallback, outcome, error, ledger_entry, period)
SELECT %(tenant)s, %(prefix)s || g, %(key)s, '', extract(epoch from now()) - %(age_s)s, 'cheap', 'p', 'quality',
  'a reason as long as a routing decision gives', '[]', 10, 5, 0, %(pico)s, 40, 120, 0, 0, 0, 0, 'ok', '',
  %(prefix)s || g || '-0', %(period)s
FROM generate_series(1, %(n)s) AS g
"""


@pytest.fixture
def postgres_ledger(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    with fresh_postgres() as dsn:
        db = LedgerDB(dsn=dsn)  # the table, as the sink makes it
        try:
            charges = [
                ("acme", "k1", TODAY, 3, ROWS, 3600),
                ("acme", "k1", YESTERDAY, 11, ROWS, 3600),  # another period: none of today's counters
                ("acme", "k2", TODAY, 7, 5, 60),
                ("acme", "k2", TODAY, 1000, 2, 3 * 86400),  # before the look-back: not read
                ("globex", "k1", YESTERDAY, 13, 4, 3600),
            ]
            for tenant, key, period, pico, n, age_s in charges:
                prefix = f"{tenant}-{key}-{period}-{pico}-"
                values = {"tenant": tenant, "key": key, "period": period, "pico": pico, "n": n, "age_s": age_s}
                db._conn.execute(ROWS_SQL, {**values, "prefix": prefix})
            db._conn.commit()
        finally:
            db.close()
        monkeypatch.setenv("ROUTER_REDIS_URL", redis_url)
        monkeypatch.setenv("ROUTER_LEDGER_SQL_DSN", dsn)
        yield dsn


async def test_the_check_of_a_postgresql_ledger_sums_in_the_database_and_says_what_it_did(
    postgres_ledger: str, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    acme_tenant, acme_k1 = AccountKeys.of(Account("acme", "k1")).spend(TODAY)
    acme_k2 = AccountKeys.of(Account("acme", "k2")).spend(TODAY)[1]
    store = RedisStore(redis_url)
    try:
        unread = CounterRead(0, 0, "")  # all of k1's counted; the tenant's and k2's lost
        assert await store.raise_spend(acme_k1, unread, 3 * ROWS, TODAY) == "raised"
        capsys.readouterr()

        tracemalloc.start()
        try:
            assert await money_check.main(["ledger-spend", "--period", "day"]) == 1
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        # The rows of the window (100,000) read whole took hundreds of MB; sums per account take a few kB.
        assert peak < 8 * 2**20, f"{peak / 2**20:.0f} MiB"
        reported = capsys.readouterr()
        assert reported.err.splitlines() == sorted(
            [  # by counter
                f"behind the ledger: {acme_tenant} counts 0 pico-USD, the SQL ledger {3 * ROWS + 35} "
                f"({3 * ROWS + 35} lacking)",
                f"behind the ledger: {acme_k2} counts 0 pico-USD, the SQL ledger 35 (35 lacking)",
            ]
        )
        assert reported.out == f"spend of period {TODAY}: 2 counter(s) behind the SQL ledger\n"

        assert await money_check.main(["ledger-spend", "--period", "day", "--repair"]) == 0
        assert await store.spent(Account("acme", "k2"), TODAY) == (3 * ROWS + 35, 35)
        assert await store.spent(Account("acme", "k1"), TODAY) == (3 * ROWS + 35, 3 * ROWS)
        capsys.readouterr()
        assert await money_check.main(["ledger-spend", "--period", "day"]) == 0
        assert capsys.readouterr().out == f"spend of period {TODAY}: 0 counter(s) behind the SQL ledger\n"
    finally:
        await store.close()
