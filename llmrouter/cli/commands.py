"""The CLI's commands: each calls the edge's API and returns its data (for --json) and a human rendering."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

from llmrouter.cli.client import Client
from llmrouter.cli.output import progress, table


@dataclass
class Result:
    data: Any
    text: str


class InputFailure(Exception):
    """A file the command reads cannot be read (missing, a directory, not UTF-8 text, a line without what it reads)."""


# What reading a field of a JSON reply raises when the reply lacks it or holds it as another type: a key or an index
# missing, a list or a number where an object was read (.get), a number that is none (int, float, Decimal of a word).
UNEXPECTED_SHAPE = (LookupError, TypeError, AttributeError, ValueError, ArithmeticError)


def _chat(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"model": args.model, "messages": [{"role": "user", "content": args.prompt}]}
    for field in ("quality_target", "max_cost_usd", "max_tokens"):
        if getattr(args, field) is not None:
            body[field] = getattr(args, field)
    return body


def ask(client: Client, args: argparse.Namespace) -> Result:
    reply = client.call("POST", "/chat/completions", json=_chat(args))
    body = client.decoded(reply)
    answer = body["choices"][0]["message"]["content"] or ""
    # The router could not read what the ledger charged (x-router-cost-pending): no amount, rather than a wrong one.
    pending = reply.headers.get("x-router-cost-pending") == "true"
    data = {
        "answer": answer,
        "model": reply.headers.get("x-router-model", body.get("model")),
        "cost_usd": reply.headers.get("x-router-cost-usd", ""),
        "cost_pending": pending,
        "reason": reply.headers.get("x-router-reason", ""),
        "usage": body.get("usage", {}),
    }
    cost = "pending (the ledger has it, at most its hold)" if pending else f"${data['cost_usd']}"
    text = f"{answer}\n\nmodel   {data['model']}\ncost    {cost}\nreason  {data['reason']}"
    return Result(data, text)


def why(candidate: dict[str, Any], decision: dict[str, Any]) -> str:
    if candidate["model"] == decision["model"]:
        return "chosen"
    if candidate.get("excluded_because"):
        return str(candidate["excluded_because"])
    if candidate["predicted_quality"] < decision["quality_target"]:
        return "predicted below the quality target"
    return "meets the target, costs more"


def decision_text(decision: dict[str, Any]) -> str:
    candidates = sorted(decision["candidates"], key=lambda c: Decimal(c["estimated_cost_usd"]))
    rows = [
        (c["model"], f"{c['predicted_quality']:.2f}", f"${c['estimated_cost_usd']}", why(c, decision))
        for c in candidates
    ]
    lines = [table(("model", "predicted quality", "est. cost", "why"), rows), ""]
    lines.append(f"chosen: {decision['model']} ({decision['reason']})")
    if decision.get("model_with_every_provider"):
        lines.append(
            f"with every provider's key: {decision['model_with_every_provider']} "
            f"({decision.get('reason_with_every_provider', '')})"
        )
    return "\n".join(lines)


def decide(client: Client, args: argparse.Namespace) -> Result:
    decision = client.json("POST", "/router/decide", json=_chat(args))
    return Result(decision, decision_text(decision))


STATS_COLUMNS = (
    ("key", "group"),
    ("requests", "requests"),
    ("success_rate", "success"),
    ("latency_p50_ms", "p50 ms"),
    ("latency_p95_ms", "p95 ms"),
    ("latency_p99_ms", "p99 ms"),
    ("escalation_rate", "escalated"),
    ("cache_hit_rate", "cached"),
    ("input_tokens", "tokens in"),
    ("output_tokens", "tokens out"),
    ("cost_usd", "cost $"),
    ("baseline_cost_usd", "baseline $"),
    ("saved_usd", "saved $"),
)


def _cell(value: Any, field: str) -> str:
    if field.endswith("_rate"):
        return f"{float(value):.0%}"
    return str(value)


def stats(client: Client, args: argparse.Namespace) -> Result:
    params = {k: v for k, v in (("since", args.since), ("until", args.until), ("group_by", args.group_by)) if v}
    body = client.json("GET", "/router/stats", params=params)
    groups = [*body.get("groups", []), body["total"]]
    rows = [[_cell(g.get(field, ""), field) for field, _ in STATS_COLUMNS] for g in groups]
    share = ", ".join(f"{m} {s:.0%}" for m, s in sorted(body["total"].get("model_share", {}).items()))
    text = table([title for _, title in STATS_COLUMNS], rows) + f"\n\nshare of calls: {share or 'none yet'}"
    return Result(body, text)


def _budget_path(scope: str, name: str) -> str:
    """Each one path segment whatever it holds: sent as typed, `acme?` or `acme#x` set or cleared acme's limit ('?'
    and '#' end the path); quoted, they name the budget of that very name (one with a '/' none: a 404)."""
    return f"/router/budgets/{quote(scope, safe='')}/{quote(name, safe='')}"


def budgets(client: Client, args: argparse.Namespace) -> Result:
    if args.set:
        scope, name, usd = args.set
        client.json("PUT", _budget_path(scope, name), json={"limit_usd": usd})
    elif args.clear:
        client.json("DELETE", _budget_path(*args.clear))
    body = client.json("GET", "/router/budgets")
    rows = [
        (
            b["scope"],
            b["name"],
            b["tenant"],
            b["limit_usd"] or "unlimited",
            b["spent_usd"],
            b["held_usd"],
            b["remaining_usd"] or "-",
            b["period"],
            time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(int(b["period_end"]))) if int(b["period_end"]) else "-",
        )
        for b in body["budgets"]
    ]
    headers = ("scope", "name", "tenant", "limit $", "spent $", "held $", "remaining $", "period", "period end")
    return Result(body, table(headers, rows))


def key_moves(client: Client, args: argparse.Namespace) -> Result:
    body = client.json("GET", "/router/key-moves" + (f"?limit={args.limit}" if args.limit else ""))
    rows = [
        (
            time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(m["at"]))),
            m["key_id"],
            "(none)" if m["from_none"] else m["from_tenant"],
            m["to_tenant"],
            m["by"],
        )
        for m in body["moves"]
    ]
    return Result(body, table(("when", "key id", "from", "to", "by"), rows))


def read_prompts(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte order mark an editor wrote is no part of the first line
    except OSError as exc:
        raise InputFailure(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise InputFailure(f"cannot read {path}: not UTF-8 text (at byte {exc.start})") from None
    prompts = []
    # Lines end at \n (\r\n too) alone: splitlines() also ends one at U+2028 and other separators, which a JSON string
    # may hold unescaped, splitting a prompt's line into fragments of JSON.
    for number, line in enumerate(text.split("\n"), start=1):
        if (line := line.removesuffix("\r")).strip():
            prompts.append(prompt_of(line, f"cannot read {path}: line {number} is"))
    return prompts


def prompt_of(line: str, where: str) -> str:
    """A line's prompt: a JSON object's "prompt" string, a JSON string, else the line as written (plain text, even
    one that parses as another JSON value: `true` is asked as written, not as Python writes it). An object without
    one (a line of the routing data's answers file) is refused, never routed as its Python repr."""
    try:
        item = json.loads(line)
    except ValueError:
        return line
    if isinstance(item, dict):
        item = item.get("prompt")
        if not isinstance(item, str):
            raise InputFailure(f'{where} a JSON object without a "prompt" string')
    elif not isinstance(item, str):
        return line
    if not item.strip():
        raise InputFailure(f"{where} an empty prompt")
    return item


def evaluate(client: Client, args: argparse.Namespace) -> Result:
    """Route every prompt (decisions only: nothing is generated or charged) and compare the estimated cost of
    the router's choices with always using the strongest candidate the registry prices highest."""
    prompts = read_prompts(args.prompts)[: args.limit]
    chosen: dict[str, int] = {}
    routed_cost, strongest_cost = Decimal(0), Decimal(0)
    for prompt in progress(prompts, "evaluate", sys.stderr):
        decision = client.json("POST", "/router/decide", json={"messages": [{"role": "user", "content": prompt}]})
        costs = {c["model"]: Decimal(c["estimated_cost_usd"]) for c in decision["candidates"] if c["eligible"]}
        chosen[decision["model"]] = chosen.get(decision["model"], 0) + 1
        routed_cost += costs.get(decision["model"], Decimal(0))
        strongest_cost += max(costs.values(), default=Decimal(0))
    data = {
        "prompts": len(prompts),
        "chosen": chosen,
        "estimated_cost_usd": str(routed_cost),
        "always_strongest_usd": str(strongest_cost),
        "saved_usd": str(strongest_cost - routed_cost),
    }
    rows = [(model, n, f"{n / max(len(prompts), 1):.0%}") for model, n in sorted(chosen.items())]
    text = table(("model", "prompts", "share"), rows)
    text += f"\n\nestimated cost ${routed_cost}; always the priciest eligible model ${strongest_cost}"
    text += f"; saved ${strongest_cost - routed_cost}"
    return Result(data, text)


def ledger_export(args: argparse.Namespace) -> int:
    """Runs where the ledger's database is reachable, with the router's ROUTER_LEDGER_SQL_* settings."""
    from services.ledger.commands import main as ledger_main

    argv = ["export", "--format", args.format, "--out", str(args.out)]
    for flag in ("since", "until", "tenant"):
        if getattr(args, flag) not in (None, ""):  # since and until as read (Unix seconds; 0 too), read again so
            argv.append(f"--{flag}={getattr(args, flag)}")  # one word: a negative number is no option
    return asyncio.run(ledger_main(argv))
