"""A batch line a draining router refused as its cut ran (admitted after the cut, or cut before anything of it was
served or charged: SHUTTING_DOWN `retryable` true, `charged_usd` 0, its request id released:
services/router/shutdown_cut.py) is sent again under the same request id, as a line refused before admission is, and
answered by a router that serves it. It was written to the error file as a 503 `server_shutting_down`, so every rolling
restart of the routers failed the lines that reached one in its last second. A line cut with a charge (`retryable`
false) is not sent again: its retry would be refused as a duplicate, and the line's result says what it was charged."""

from __future__ import annotations

import secrets
from decimal import Decimal

import grpc
import pytest
from pydantic import SecretStr

from llmrouter.v1 import router_pb2, router_pb2_grpc
from services.edge.keys import key_line
from services.router.shutdown_cut import cut_error
from tests.integration.conftest import quiet_edge_settings, sdk_edge, served_router
from tests.integration.test_batch_parking import submit
from tests.integration.test_provider_batches import finished, lines_of


class DrainingOnce(router_pb2_grpc.RouterServicer):
    """Refuses its first Complete as a draining router's cut does (`charged_usd`, retryable when it is 0 and
    `released`), then answers as a router that serves."""

    def __init__(self, charged: Decimal, released: bool) -> None:
        self.charged, self.released = charged, released
        self.asked: list[str] = []

    async def Complete(self, request: router_pb2.CompleteRequest, context: grpc.aio.ServicerContext) -> object:
        self.asked.append(request.request_id)
        if len(self.asked) == 1:
            error = cut_error(request.request_id, self.charged, self.released)
            await context.abort(error.code, error.message, error.trailing_metadata())
        return router_pb2.CompleteResponse(id=request.request_id, model="cheap-model", content="hi", cost_usd="0")


@pytest.mark.parametrize("released", [True, False], ids=["released", "charged"])
async def test_a_line_the_draining_router_refused_unserved_is_sent_again(released: bool) -> None:
    tenant, key = f"draining-{secrets.token_hex(4)}", f"sk-draining-{secrets.token_urlsafe(12)}"
    router = DrainingOnce(Decimal(0 if released else "0.000123"), released)
    async with served_router(router) as router_addr:
        settings = quiet_edge_settings(router_addr, api_keys=SecretStr(key_line(tenant, key)))
        async with sdk_edge(settings, key) as client:
            done = await finished(client, await submit(client, 1), timeout_s=30)
            answers = await lines_of(client, done.output_file_id)
            errors = await lines_of(client, done.error_file_id)
    if released:
        assert (done.status, done.request_counts.completed, done.request_counts.failed) == ("completed", 1, 0)
        assert answers["parked-0"]["response"]["status_code"] == 200 and not errors
        assert len(router.asked) == 2 and router.asked[0] == router.asked[1]  # the same request id, sent again
    else:
        assert (done.request_counts.completed, done.request_counts.failed) == (0, 1)
        error = errors["parked-0"]["response"]
        assert error["status_code"] == 503 and error["body"]["error"]["code"] == "server_shutting_down"
        assert error["body"]["x_router"]["cost_usd"] == "0.000123"
        assert len(router.asked) == 1
