"""A verifier whose reply is not one probability (another version's contract, a bug) is treated as one that did not
answer: the answer, already generated and paid for, is kept; it never turns into an error that loses its charge."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import grpc
import pytest

from llmrouter.v1 import classifier_pb2, classifier_pb2_grpc
from services.router import metrics
from services.router.verifying import ClassifierVerifier


class Replying(classifier_pb2_grpc.ClassifierServicer):
    def __init__(self) -> None:
        self.good: list[float] = []

    async def Verify(
        self, request: classifier_pb2.VerifyRequest, context: grpc.aio.ServicerContext
    ) -> classifier_pb2.VerifyResponse:
        return classifier_pb2.VerifyResponse(good=self.good, model_version="v-other")


@pytest.fixture
async def served() -> AsyncIterator[tuple[Replying, classifier_pb2_grpc.ClassifierStub]]:
    servicer = Replying()
    server = grpc.aio.server()
    classifier_pb2_grpc.add_ClassifierServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield servicer, classifier_pb2_grpc.ClassifierStub(channel)
    finally:
        await server.stop(0)


def unavailable() -> float:
    return metrics.VERIFIER.labels("unavailable")._value.get()


@pytest.mark.parametrize("good", [[], [0.2, 0.9], [math.nan], [1.5]])
async def test_a_reply_that_is_not_one_probability_keeps_the_answer(
    served: tuple[Replying, classifier_pb2_grpc.ClassifierStub], good: list[float]
) -> None:
    servicer, stub = served
    servicer.good = good
    verifier = ClassifierVerifier(stub, 5.0, {}, frozenset({"auto"}))
    before = unavailable()
    assert await verifier.verdict("What is 2 + 2?", "4", None) is None
    assert unavailable() == before + 1


async def test_a_probability_is_a_verdict(served: tuple[Replying, classifier_pb2_grpc.ClassifierStub]) -> None:
    servicer, stub = served
    servicer.good = [0.25]
    verdict = await ClassifierVerifier(stub, 5.0, {"auto": 0.4}, frozenset({"auto"})).verdict("q", "a", None)
    assert verdict is not None and verdict.good == 0.25 and verdict.doubtful(0.4)
