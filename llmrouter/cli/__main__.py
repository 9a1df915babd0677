"""`llmrouter COMMAND`: ask, decide, stats, budgets, key-moves, ledger export, evaluate. Human tables by default, --json
for scripts. The edge's URL and key come from --url/--api-key or LLMROUTER_URL/LLMROUTER_API_KEY."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from llmrouter.cli import commands
from llmrouter.cli.arguments import fraction, moment, positive_int
from llmrouter.cli.client import DEFAULT_URL, ApiFailure, Client


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="llmrouter", description=__doc__.split("\n\n")[0])
    root.add_argument("--url", help=f"the edge's API base (default $LLMROUTER_URL or {DEFAULT_URL})")
    root.add_argument("--api-key", help="bearer key (default $LLMROUTER_API_KEY)")
    root.add_argument("--json", action="store_true", help="print JSON instead of tables")
    sub = root.add_subparsers(dest="command", required=True)

    def routing_limits(command: argparse.ArgumentParser) -> None:
        command.add_argument("prompt")
        command.add_argument("--model", default="auto")
        command.add_argument("--quality-target", type=fraction)
        command.add_argument("--max-cost-usd")
        command.add_argument("--max-tokens", type=positive_int)

    routing_limits(sub.add_parser("ask", help="send a prompt through the router; print answer, model, cost, why"))
    routing_limits(sub.add_parser("decide", help="every candidate and why it was or was not chosen; calls no model"))
    stats = sub.add_parser("stats", help="requests, success, latency, cost, baseline, savings")
    stats.add_argument("--since", type=moment, help="Unix seconds or YYYY-MM-DD (UTC)")
    stats.add_argument("--until", type=moment, help="Unix seconds or YYYY-MM-DD (UTC)")
    stats.add_argument("--group-by", choices=["model", "tenant", "day"])
    budgets = sub.add_parser("budgets", help="limit, spent, held, remaining, period end; an admin sets limits")
    budgets.add_argument("--set", nargs=3, metavar=("SCOPE", "NAME", "USD"), help="admin: set tenant|key NAME's limit")
    budgets.add_argument("--clear", nargs=2, metavar=("SCOPE", "NAME"), help="admin: back to the default limit")
    moves = sub.add_parser("key-moves", help="admin: API keys moved between tenants, as recorded, the latest first")
    moves.add_argument("--limit", type=positive_int, help="the latest N (default 100, at most 1000)")
    ledger = sub.add_parser("ledger", help="the SQL ledger (ROUTER_LEDGER_SQL_* settings, where it lives)")
    ledger_sub = ledger.add_subparsers(dest="ledger_command", required=True)
    export = ledger_sub.add_parser("export", help="write the rows as CSV or JSONL")
    export.add_argument("--format", choices=["csv", "jsonl"], default="jsonl")
    export.add_argument("--out", type=Path, required=True)
    export.add_argument("--since", type=moment, help="Unix seconds or YYYY-MM-DD (UTC)")
    export.add_argument("--until", type=moment, help="Unix seconds or YYYY-MM-DD (UTC)")
    export.add_argument("--tenant")
    evaluate = sub.add_parser("evaluate", help="route a prompt file (decisions only) and sum what it would cost")
    evaluate.add_argument("prompts", type=Path, help="JSONL of objects with a 'prompt' string, or one prompt per line")
    evaluate.add_argument("--limit", type=positive_int, help="only the first N prompts")
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "ledger":
        return commands.ledger_export(args)
    client = Client(args.url, args.api_key)
    try:
        result: Any = getattr(commands, args.command.replace("-", "_"))(client, args)
    except (ApiFailure, commands.InputFailure) as exc:  # said in one line: no traceback for what the user can fix
        print(f"llmrouter {args.command}: {exc}", file=sys.stderr)
        return 1
    except commands.UNEXPECTED_SHAPE as exc:  # JSON without the fields read: --url naming some other JSON API
        said = f"a reply without what it reads ({exc.__class__.__name__}: {exc}): is {client.base_url} the edge's API?"
        print(f"llmrouter {args.command}: {said}", file=sys.stderr)
        return 1
    finally:
        client.close()
    try:
        print(json.dumps(result.data, indent=2) if args.json else result.text)
        sys.stdout.flush()
    except BrokenPipeError:  # the reader left early (`| head`): nothing to say to it, and no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the flush at exit writes nowhere
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
