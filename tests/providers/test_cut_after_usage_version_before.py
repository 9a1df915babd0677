"""A router of the version before usage_final, beside a providers service of this one (a rolling upgrade): it charges a
timeout its worst case on top of whatever the failure's metadata measures. So the providers tell it a stream cut after
its upstream's whole usage as they did before, that usage left out, and it charges the worst case alone, not that
attempt twice. The providers service over a stalling loopback upstream; the router's attempt_cost of the version before
run on that failure in a process of its own."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

from llmrouter.v1 import common_pb2, provider_pb2
from tests.fakes.raw_upstream import StallingUpstream
from tests.providers.conftest import providers_service
from tests.providers.test_cut_after_usage import chunks_to_failure, openai_wire
from tests.router.old_version import checkout, run

BEFORE = "e0106d2"  # the version before the providers marked a whole usage (usage_final)
WORST = "0.01"
OLD_ATTEMPT_COST = """
import json, sys
from decimal import Decimal
import grpc
from llmrouter.errors import ServiceError
from llmrouter.registry import load_registry
from services.router.serving import attempt_cost
registry_path, code, reason, metadata, worst = sys.argv[1:]
error = ServiceError(grpc.StatusCode[code], reason, "cut", json.loads(metadata))
print(attempt_cost(error, load_registry(registry_path).get("cheap"), Decimal(worst)))
"""


async def test_a_router_of_the_version_before_charges_such_a_cut_its_worst_case_alone(tmp_path: Path) -> None:
    (tmp_path / "old").mkdir()
    old_tree = checkout(BEFORE, tmp_path / "old")
    message = common_pb2.ChatMessage(role="user", content="Look it up.")
    # As that router asks: the progress chunks of its version, no usage_final (it knows no such field).
    request = provider_pb2.GenerateRequest(
        model="cheap", messages=[message], request_id="r-1", tool_call_progress=True, input_progress=True
    )
    async with (
        StallingUpstream(openai_wire(True)) as upstream,
        providers_service(tmp_path, upstream.url, upstream.url, total_timeout_s=1.0, read_timeout_s=10.0) as stub,
    ):
        _, err = await chunks_to_failure(stub, request)
    args = [str(tmp_path / "models.yaml"), err.code.name, err.reason, json.dumps(err.metadata), WORST]
    assert Decimal(await run(old_tree, OLD_ATTEMPT_COST, *args)) == Decimal(WORST)
