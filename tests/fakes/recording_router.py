"""A stand-in router for the edge's tests: it records each request it is asked and answers Decide and Complete with a
fixed cheap-model reply, so a test reads what the edge sent on (or that it sent nothing). Its registry has no model."""

from __future__ import annotations

from typing import Any

from llmrouter.v1 import common_pb2, router_pb2, router_pb2_grpc


class RecordingRouter(router_pb2_grpc.RouterServicer):
    def __init__(self) -> None:
        self.asked: list[router_pb2.CompleteRequest] = []

    async def Decide(self, request: router_pb2.CompleteRequest, context: Any) -> router_pb2.Decision:
        self.asked.append(request)
        return router_pb2.Decision(model="cheap-model")

    async def Complete(self, request: router_pb2.CompleteRequest, context: Any) -> router_pb2.CompleteResponse:
        self.asked.append(request)
        return router_pb2.CompleteResponse(id="c1", model="cheap-model", content="hi", cost_usd="0")

    async def ListModels(self, request: common_pb2.ListModelsRequest, context: Any) -> common_pb2.ListModelsResponse:
        return common_pb2.ListModelsResponse()
