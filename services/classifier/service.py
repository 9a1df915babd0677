"""llmrouter.v1.Classifier: validate, micro-batch, answer one quality map per prompt."""

from __future__ import annotations

import grpc
from google.protobuf.message import DecodeError

from llmrouter.errors import invalid
from llmrouter.v1 import classifier_pb2
from services.classifier.batcher import MicroBatcher
from services.classifier.model import QualityModel

SERVICE_NAME = "llmrouter.v1.Classifier"


class ClassifierService:
    def __init__(self, model: QualityModel, batcher: MicroBatcher, max_prompts: int) -> None:
        self.model = model
        self.batcher = batcher
        self.max_prompts = max_prompts

    async def score(self, raw: bytes, context: grpc.aio.ServicerContext) -> classifier_pb2.ScoreResponse:
        # Parsed here rather than by grpc so a prompt that is not valid UTF-8 gets INVALID_ARGUMENT with a
        # reason instead of grpc's generic deserialisation failure.
        try:
            request = classifier_pb2.ScoreRequest.FromString(raw)
        except DecodeError:
            raise invalid("prompts must be valid UTF-8 strings", "prompts") from None
        if not request.prompts:
            raise invalid("at least one prompt is required", "prompts")
        if len(request.prompts) > self.max_prompts:
            raise invalid(f"at most {self.max_prompts} prompts per request", "prompts")
        quality = await self.batcher.score(list(request.prompts))
        names = self.model.models
        return classifier_pb2.ScoreResponse(
            results=[
                classifier_pb2.PromptScore(quality={n: float(q) for n, q in zip(names, row, strict=True)})
                for row in quality
            ],
            model_version=self.model.version,
        )

    def register(self, server: grpc.aio.Server) -> None:
        handler = grpc.unary_unary_rpc_method_handler(
            self.score, response_serializer=classifier_pb2.ScoreResponse.SerializeToString
        )
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, {"Score": handler}),))
