"""The verifier as the router calls it after a cheap model answered: P(the answer is good) from the classifier
service's Verify, with the escalation thresholds calibrated for that verifier version."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from llmrouter.v1 import classifier_pb2, classifier_pb2_grpc


@dataclass(frozen=True)
class Verdict:
    good: float  # P(the answer is good)
    model_version: str
    # Per escalation mode: the P(good) below which to escalate; empty when the verifier is not calibrated.
    escalate_below: dict[str, float] = field(default_factory=dict)

    def doubtful(self, escalate_below: float) -> bool:
        return self.good < escalate_below


async def verify_answer(
    stub: classifier_pb2_grpc.ClassifierStub, prompt: str, answer: str, timeout_s: float = math.inf
) -> Verdict:
    """Raises grpc.RpcError when the verifier cannot answer (none loaded, unreachable, past the timeout) and
    MalformedVerdict when its reply is not one probability."""
    request = classifier_pb2.VerifyRequest(pairs=[classifier_pb2.AnswerToVerify(prompt=prompt, answer=answer)])
    reply = await stub.Verify(request, timeout=None if math.isinf(timeout_s) else timeout_s)
    if len(reply.good) != 1 or not 0.0 <= reply.good[0] <= 1.0:  # NaN fails the comparison too
        raise MalformedVerdict(f"the verifier replied {len(reply.good)} values for one answer: {list(reply.good)[:3]}")
    return Verdict(reply.good[0], reply.model_version, dict(reply.escalate_below))


class MalformedVerdict(Exception):
    """A reply that is not one P(good) in [0, 1] for the one answer asked about (a verifier of another version)."""
