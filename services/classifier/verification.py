"""llmrouter.v1.Classifier/Verify: the verifier judged off the event loop, one request's pairs in one run at a
time (its own executor: a Verify never waits behind, or stalls, the Score micro-batches), answered with the
escalation thresholds calibrated for that verifier (services/verifier/thresholds.py), when there are some."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from llmrouter.errors import ServiceError, invalid
from llmrouter.v1 import classifier_pb2

# The module, not its names: services.verifier.model imports services.classifier, so importing it first must work.
from services.verifier import model as verifier_model
from services.verifier.thresholds import load_thresholds

log = logging.getLogger("classifier")


class Verification:
    def __init__(
        self, verifier: verifier_model.Verifier | None, max_pairs: int, escalate_below: dict[str, float] | None = None
    ) -> None:
        self.verifier = verifier
        self.max_pairs = max_pairs
        self.escalate_below = escalate_below or {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="verifier-infer")

    @classmethod
    async def load(cls, model_dir: Path, threads: int, max_pairs: int) -> Verification:
        """The verifier when its artefacts are there; without them the service starts and Verify says so."""
        if verifier_model.missing_artefacts(model_dir):
            log.warning("verifier artefacts missing: Verify is unavailable", extra={"dir": str(model_dir)})
            return cls(None, max_pairs)
        verifier = await asyncio.to_thread(verifier_model.Verifier, model_dir, threads)
        await asyncio.to_thread(verifier.predict, [("What is 2 + 2?", "4")])  # first-run allocations
        escalate_below = load_thresholds(model_dir, verifier.version)
        log.info("verifier model loaded", extra={"version": verifier.version, "escalate_below": escalate_below})
        return cls(verifier, max_pairs, escalate_below)

    async def verify(self, request: classifier_pb2.VerifyRequest) -> classifier_pb2.VerifyResponse:
        if self.verifier is None:
            raise ServiceError(
                grpc.StatusCode.FAILED_PRECONDITION, "VERIFIER_UNAVAILABLE", "no verifier model is loaded"
            )
        if not request.pairs:
            raise invalid("at least one (prompt, answer) pair is required", "pairs")
        if len(request.pairs) > self.max_pairs:
            raise invalid(f"at most {self.max_pairs} pairs per request", "pairs")
        pairs = [(p.prompt, p.answer) for p in request.pairs]
        good = await asyncio.get_running_loop().run_in_executor(self._executor, self.verifier.predict, pairs)
        return classifier_pb2.VerifyResponse(
            good=[float(g) for g in good], model_version=self.verifier.version, escalate_below=self.escalate_below
        )

    async def close(self) -> None:
        self._executor.shutdown(wait=True)
