"""The verifier as the router calls it after a cheap model answered: P(the answer is good) from the classifier
service's Verify, or None when it cannot say in time (the caller keeps the answer or uses its other signals)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import grpc

from llmrouter.v1 import classifier_pb2, classifier_pb2_grpc

log = logging.getLogger("llmrouter.verifier")


@dataclass(frozen=True)
class Verdict:
    good: float  # P(the answer is good)
    model_version: str

    def doubtful(self, escalate_below: float) -> bool:
        return self.good < escalate_below


async def verify_answer(
    stub: classifier_pb2_grpc.ClassifierStub, prompt: str, answer: str, timeout_s: float = math.inf
) -> Verdict | None:
    request = classifier_pb2.VerifyRequest(pairs=[classifier_pb2.AnswerToVerify(prompt=prompt, answer=answer)])
    try:
        reply = await stub.Verify(request, timeout=None if math.isinf(timeout_s) else timeout_s)
    except grpc.RpcError as err:
        log.warning("verifier unavailable; answer kept unverified", extra={"code": str(err.code())})
        return None
    return Verdict(reply.good[0], reply.model_version)
