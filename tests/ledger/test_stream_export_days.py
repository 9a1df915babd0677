"""`python -m services.router.ledger export --older-than-days N`: a count that is no finite number of at least 0 is the
command's usage error (exit 2), said beside the option, not a traceback; one past the epoch exports nothing. On real
Redis."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmrouter.redis_connect import connect
from services.router.store import ledger_key
from tests.conftest import ROOT


def export(redis_url: str, out: Path, days: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ROUTER_REDIS_URL": redis_url}
    command = [sys.executable, "-m", "services.router.ledger", "export", "--out", str(out), f"--older-than-days={days}"]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("days", "said"),
    [
        ("nan", "must be a finite number, not 'nan'"),
        ("inf", "must be a finite number, not 'inf'"),
        ("-1", "must be at least 0, not -1"),
    ],
)
async def test_a_days_count_that_is_no_finite_number_of_at_least_0_is_a_usage_error(
    redis_url: str, tmp_path: Path, days: str, said: str
) -> None:
    out = tmp_path / "ledger.jsonl"
    done = await asyncio.to_thread(export, redis_url, out, days)
    assert done.returncode == 2
    assert f"error: argument --older-than-days: {said}" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()


async def test_days_past_the_epoch_export_nothing(redis_url: str, tmp_path: Path) -> None:
    client = connect(redis_url)
    old_ms = int((time.time() - 10 * 86400) * 1000)
    try:
        await client.xadd(ledger_key(2), {"record": json.dumps({"n": "old"})}, id=f"{old_ms}-0")
        out = tmp_path / "ledger.jsonl"
        for days, exported in (("1e9", 0), ("1e306", 0), ("5", 1)):
            done = await asyncio.to_thread(export, redis_url, out, days)
            assert done.returncode == 0, done.stderr
            assert done.stdout == f"exported {exported} entries into {out}\n"
        assert [json.loads(line)["record"]["n"] for line in out.read_text().splitlines()] == ["old"]
    finally:
        await client.aclose()
