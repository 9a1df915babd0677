"""The floor under the classifier's per-call cost: llmrouter.v1.Classifier/Score served by the same bootstrap
(mTLS, the shared interceptor, uvloop) but answering a constant score per prompt, with no model: what a call
costs before any batching or inference. Started by `python -m benchmarks.classifier --floor`."""

from __future__ import annotations

import grpc

from llmrouter.server import Built, run_service
from llmrouter.settings import load_settings
from llmrouter.v1 import classifier_pb2, classifier_pb2_grpc
from services.classifier.model import Metadata
from services.classifier.service import SERVICE_NAME
from services.classifier.settings import ClassifierSettings


class ConstantScores(classifier_pb2_grpc.ClassifierServicer):
    def __init__(self, models: list[str]) -> None:
        self.models = models

    async def Score(
        self, request: classifier_pb2.ScoreRequest, context: grpc.aio.ServicerContext
    ) -> classifier_pb2.ScoreResponse:
        response = classifier_pb2.ScoreResponse(model_version="floor")
        for _ in request.prompts:  # a reply of the real one's size
            scores = response.results.add().quality
            for name in self.models:
                scores[name] = 0.5
        return response


def main() -> None:
    settings = load_settings(ClassifierSettings)
    servicer = ConstantScores(Metadata.read(settings.model_dir).models)

    async def build() -> Built:
        return {SERVICE_NAME: lambda server: classifier_pb2_grpc.add_ClassifierServicer_to_server(servicer, server)}, []

    run_service("classifier-floor", settings, build)


if __name__ == "__main__":
    main()
