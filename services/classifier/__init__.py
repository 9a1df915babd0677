"""The classifier service: predicts, per prompt, the probability that each known model answers correctly, and
(Verify) the probability that a given answer is good."""

from __future__ import annotations

import asyncio
import logging

from llmrouter.server import Closer, Registrations
from services.classifier.batcher import MicroBatcher
from services.classifier.model import QualityModel
from services.classifier.service import SERVICE_NAME, ClassifierService
from services.classifier.settings import ClassifierSettings
from services.classifier.verification import Verification

log = logging.getLogger("classifier")
# Warm-up: a short and a long prompt at a few batch sizes so the first real calls do not pay for
# onnxruntime's first-run allocations.
_WARMUP = ["What is 2 + 2?", "Explain the difference between a list and a tuple. " * 60]


async def build(settings: ClassifierSettings) -> tuple[Registrations, list[Closer]]:
    model = await asyncio.to_thread(
        QualityModel,
        settings.model_dir,
        settings.threads,
        settings.head_tokens,
        settings.tail_tokens,
        small_batch=settings.small_batch,
    )
    for size in (1, min(8, settings.max_batch)):
        for prompt in _WARMUP:
            await asyncio.to_thread(model.predict, [prompt] * size)
    batcher = MicroBatcher(model.predict, settings.max_batch, settings.max_wait_ms, settings.inline_chars)
    batcher.start()
    verification = await Verification.load(settings.verifier_dir, settings.threads, settings.max_prompts)
    service = ClassifierService(model, batcher, settings.max_prompts, verification)
    log.info("classifier model loaded", extra={"version": model.version, "models": len(model.models)})
    return {SERVICE_NAME: service.register}, [batcher.close, verification.close]
