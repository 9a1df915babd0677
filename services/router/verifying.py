"""The answer verifier as the router asks it (escalation.Verifier): Classifier/Verify within a deadline, with the
router's own thresholds over the calibrated ones. Unreachable, unloaded or late is None: the answer is kept,
never the request failed."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from typing import Literal

import grpc

from llmrouter.v1 import classifier_pb2_grpc
from services.router import metrics
from services.router.escalation import verifier_asked
from services.router.routed import Mode
from services.verifier.client import MalformedVerdict, Verdict, verify_answer

log = logging.getLogger("llmrouter.router")


class ClassifierVerifier:
    def __init__(
        self,
        stub: classifier_pb2_grpc.ClassifierStub,
        timeout_s: float,
        escalate_below: Mapping[Literal["auto", "strict"], float],
        modes: frozenset[str],
    ) -> None:
        self.stub = stub
        self.modes = modes
        self.timeout_s = timeout_s
        # Per mode, replacing the verifier's calibrated thresholds.
        self.escalate_below: dict[str, float] = {mode: value for mode, value in escalate_below.items()}

    def fingerprint(self, mode: Mode, threshold: float | None) -> str:
        """What decides whether an answer in `mode` is kept, for the response cache's key: '' when the verifier is not
        asked; else the threshold this router holds the answer to, its own for the mode or the verifier's calibrated
        one (a request's own threshold is in the key already). Not the timeout: a verdict too late is the verifier's
        unavailability, as an outage is, not this router's judgement; nor another mode's threshold."""
        if not verifier_asked(self.modes, mode, threshold):
            return ""
        below = "the request's" if threshold is not None else self.escalate_below.get(mode, "calibrated")
        return hashlib.sha256(json.dumps(["verifier", below]).encode()).hexdigest()[:16]

    async def verdict(self, prompt: str, answer: str, time_left: float | None) -> Verdict | None:
        timeout = self.timeout_s if time_left is None else min(self.timeout_s, time_left)
        try:
            verdict = await verify_answer(self.stub, prompt, answer, timeout)
        except grpc.RpcError as err:
            late = err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            metrics.VERIFIER.labels("timeout" if late else "unavailable").inc()
            log.warning("verifier did not answer; answer kept unverified", extra={"code": str(err.code())})
            return None
        except MalformedVerdict as err:  # the answer is paid for and delivered, whatever the verifier says
            metrics.VERIFIER.labels("unavailable").inc()
            log.warning("verifier reply malformed; answer kept unverified", extra={"error": str(err)})
            return None
        return Verdict(verdict.good, verdict.model_version, {**verdict.escalate_below, **self.escalate_below})
