"""The `llmrouter` CLI against the running chain: each command's JSON is the API's answer, its tables name
what they show, and its failures are one clear line with a non-zero status."""

from __future__ import annotations

import asyncio
import csv
import json
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from llmrouter.cli.__main__ import main
from tests.integration.test_operator import keyed_edge  # noqa: F401  (the fixture)


async def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """The CLI is synchronous: it runs in a thread so the edge, on this event loop, can answer it."""
    code = await asyncio.to_thread(main, list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def test_every_command_against_the_stack(
    keyed_edge: tuple[str, dict[str, str]],  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    base_url, who = keyed_edge
    tenant_args = ["--url", base_url, "--api-key", who["key_a"]]
    admin_args = ["--url", base_url, "--api-key", who["key_root"]]

    code, out, _ = await run(capsys, *tenant_args, "--json", "ask", f"What is 6 * 7? {uuid.uuid4().hex}")
    asked: dict[str, Any] = json.loads(out)
    assert code == 0 and asked["model"] in {"cheap-model", "strong-model"} and asked["answer"]
    code, out, _ = await run(capsys, *tenant_args, "ask", f"Name a colour. {uuid.uuid4().hex}")
    assert code == 0 and "\nmodel   " in out and "\ncost    $" in out and "\nreason  " in out

    code, out, _ = await run(capsys, *tenant_args, "decide", "Prove that there are infinitely many primes")
    assert code == 0
    assert out.splitlines()[0].split() == ["model", "predicted", "quality", "est.", "cost", "why"]
    assert "chosen:" in out and "cheap-model" in out and "strong-model" in out

    deadline = asyncio.get_running_loop().time() + 30
    while True:  # the SQL sink copies asynchronously
        code, out, _ = await run(capsys, *tenant_args, "--json", "stats", "--group-by", "model")
        stats = json.loads(out)
        if int(stats["total"]["requests"]) >= 2 or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.3)
    assert int(stats["total"]["requests"]) == 2
    code, out, _ = await run(capsys, *tenant_args, "stats")
    assert code == 0 and "saved $" in out and "share of calls:" in out
    code, out, _ = await run(capsys, *tenant_args, "--json", "stats", "--since", "2000-01-01", "--until", "2000-01-02")
    assert code == 0 and int(json.loads(out)["total"]["requests"]) == 0  # the dates, read here, are the edge's window

    code, out, _ = await run(capsys, *admin_args, "budgets", "--set", "tenant", who["a"], "2.5")
    assert code == 0 and who["a"] in out and "2.5" in out
    code, out, _ = await run(capsys, *tenant_args, "--json", "budgets")
    mine = json.loads(out)["budgets"]
    assert {b["tenant"] for b in mine} == {who["a"]}
    assert next(b for b in mine if b["scope"] == "tenant")["limit_usd"] == "2.5"
    code, _, err = await run(capsys, *tenant_args, "budgets", "--set", "tenant", who["a"], "100")
    assert code == 1 and err.startswith("llmrouter budgets: HTTP 403")

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": p}) for p in ("hi", "Derive the Black-Scholes PDE")))
    code, out, _ = await run(capsys, *tenant_args, "--json", "evaluate", str(prompts))
    evaluated = json.loads(out)
    assert evaluated["prompts"] == 2 and sum(evaluated["chosen"].values()) == 2
    assert float(evaluated["saved_usd"]) >= 0

    exported = tmp_path / "ledger.csv"
    code, _, err = await run(
        capsys, "ledger", "export", "--format", "csv", "--out", str(exported), "--tenant", who["a"]
    )
    assert code == 0, err
    rows = list(csv.DictReader(exported.open()))
    assert len(rows) == 2 and {r["tenant"] for r in rows} == {who["a"]}
    assert sum(Decimal(r["cost_usd"]) for r in rows) == Decimal(stats["total"]["cost_usd"])  # exact


async def test_a_stack_that_is_not_there_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = await run(capsys, "--url", "http://127.0.0.1:9/v1", "stats")
    assert code == 1 and out == ""
    assert err.strip() == "llmrouter stats: cannot reach http://127.0.0.1:9/v1 (ConnectError): is the stack running?"


@pytest.mark.parametrize("typed", ["{tenant}?", "{tenant}#x"])
async def test_a_budget_name_with_url_syntax_changes_no_other_budget(
    keyed_edge: tuple[str, dict[str, str]],  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    typed: str,
) -> None:
    """A name is one path segment, whatever it holds: `acme?` is the tenant of that name (a request may name any), not
    acme; sent as typed, the CLI set or cleared acme's own limit ('?' and '#' end the path)."""
    base_url, who = keyed_edge
    admin_args = ["--url", base_url, "--api-key", who["key_root"]]
    code, _, err = await run(capsys, *admin_args, "budgets", "--set", "tenant", who["a"], "2.5")
    assert code == 0, err
    name = typed.format(tenant=who["a"])

    async def limits() -> dict[str, tuple[str, bool]]:
        code, out, err = await run(capsys, *admin_args, "--json", "budgets")
        assert code == 0, err
        views = json.loads(out)["budgets"]
        return {b["name"]: (b["limit_usd"], b["overridden"]) for b in views if b["scope"] == "tenant"}

    code, _, err = await run(capsys, *admin_args, "budgets", "--set", "tenant", name, "0")
    assert code == 0, err
    assert (await limits())[who["a"]] == ("2.5", True) and (await limits())[name] == ("0", True)
    code, _, err = await run(capsys, *admin_args, "budgets", "--clear", "tenant", name)
    assert code == 0, err
    assert (await limits())[who["a"]] == ("2.5", True) and name not in await limits()

    # A name with a ':' (a caller's key id) is still the name the edge reads.
    code, out, err = await run(capsys, *admin_args, "--json", "budgets", "--set", "key", f"caller:{who['a']}", "1")
    assert code == 0, err
    assert any(b["name"] == f"caller:{who['a']}" and b["limit_usd"] == "1" for b in json.loads(out)["budgets"])


async def test_a_key_budget_under_a_name_no_key_has_is_one_clear_line(
    keyed_edge: tuple[str, dict[str, str]],  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`zz` (a typo, or the key itself rather than its id) could match no request: set, it capped nothing."""
    base_url, who = keyed_edge
    admin_args = ["--url", base_url, "--api-key", who["key_root"]]
    code, out, err = await run(capsys, *admin_args, "budgets", "--set", "key", "zz", "1")
    assert (code, out) == (1, "")
    assert err.strip() == (
        "llmrouter budgets: HTTP 400: name must be a key id: 16 lowercase hex digits (the first of the key's SHA-256,"
        " as budgets and the ledger show it), 'anonymous' or caller:<name>"
    )
