"""A gRPC caller's malformed logit_bias is refused by the router (INVALID_ARGUMENT naming logit_bias), as the edge's
model refuses a REST caller's: `[]` or `0` were routed anywhere and forwarded, a list or a float bias to a named model
reached its upstream, which refuses it with a 400."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest

from llmrouter.errors import ServiceError
from llmrouter.v1 import common_pb2, router_pb2, router_pb2_grpc
from tests.integration.conftest import Chain
from tests.integration.test_chain import unique

MALFORMED: list[Any] = [[], 0, False, "", [1], {"gpt": 1}, {"-1": 1}, {"50256": 101}, {"50256": 1.5}, {"50256": True}]


async def complete(chain: Chain, model: str, passthrough: dict[str, Any]) -> router_pb2.CompleteResponse:
    request = router_pb2.CompleteRequest(
        messages=[common_pb2.ChatMessage(role="user", content=unique("hello"))],  # never a cache hit
        model=model,
        max_tokens=8,
        passthrough_json=json.dumps(passthrough),
    )
    async with grpc.aio.insecure_channel(chain.router_addr) as channel:
        return await router_pb2_grpc.RouterStub(channel).Complete(request, timeout=10)


def sent(chain: Chain) -> int:
    return len(chain.budget.requests) + len(chain.premium.requests)


@pytest.mark.parametrize("model", ["strong-model", ""], ids=["named", "routed"])
@pytest.mark.parametrize("logit_bias", MALFORMED, ids=[json.dumps(v) for v in MALFORMED])
async def test_a_malformed_logit_bias_is_refused_naming_it(chain: Chain, model: str, logit_bias: Any) -> None:
    before = sent(chain)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await complete(chain, model, {"logit_bias": logit_bias})
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = ServiceError.from_rpc_error(caught.value)
    assert (error.reason, error.metadata) == ("INVALID_REQUEST", {"field": "logit_bias"})
    assert error.message.startswith("logit_bias")  # the edge's own rule's words, with the path to what is wrong
    assert sent(chain) == before


@pytest.mark.parametrize("logit_bias", [None, {}, {"50256": -100, "1": 100}])
async def test_a_well_formed_or_left_out_logit_bias_is_served(chain: Chain, logit_bias: Any) -> None:
    reply = await complete(chain, "strong-model", {"logit_bias": logit_bias})
    assert reply.content and reply.model == "strong-model"
    assert chain.premium.requests[-1].json.get("logit_bias") == (logit_bias or None)
