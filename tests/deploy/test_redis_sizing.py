"""deploy/redis_sizing.py measures what deploy/README.md sizes the money Redis by: its ledger entry must be the one
the router's charge writes (services/router/charging.py), or the figures drift as the record grows. They did: a
record of 17 fields measured 459 bytes where the router's, with a candidate per registry model, took 2,061."""

from __future__ import annotations

import ast
import json
import runpy

from llmrouter.registry import load_registry
from services.router.store.ledger_entry import compact, expanded
from tests.deploy.support import ROOT


def charge_record_fields() -> tuple[set[str], set[str]]:
    """The keys of the ledger record charging.py builds, and of each of its candidates, read from its source."""
    tree = ast.parse((ROOT / "services" / "router" / "charging.py").read_text())
    (record,) = [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        and [getattr(target, "id", "") for target in node.targets] == ["record"]
        and isinstance(node.value, ast.Dict)
    ]
    fields = {str(key.value) for key in record.keys if isinstance(key, ast.Constant)}
    candidates = record.values[[getattr(key, "value", "") for key in record.keys].index("candidates")]
    assert isinstance(candidates, ast.ListComp) and isinstance(candidates.elt, ast.Dict)
    return fields, {str(key.value) for key in candidates.elt.keys if isinstance(key, ast.Constant)}


def test_the_sized_ledger_entry_is_the_routers_charge_record() -> None:
    sized = runpy.run_path(str(ROOT / "deploy" / "redis_sizing.py"))["ledger_record"]
    entry = sized("r1")
    assert entry == compact(json.loads(entry))  # as the store writes it: compact, not as built
    record = expanded(json.loads(entry))
    fields, candidate_fields = charge_record_fields()
    assert set(record) == fields
    assert record == {**json.loads(sized("r1", full=True)), "ts": record["ts"]}
    assert [candidate["model"] for candidate in record["candidates"]] == [m.name for m in load_registry().models]
    assert all(set(candidate) == candidate_fields for candidate in record["candidates"])
