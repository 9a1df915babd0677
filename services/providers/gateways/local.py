"""The local model (SmolLM2-135M-Instruct via onnxruntime-genai), in-process. Generation runs in worker
threads so the event loop stays free; leaving the stream early stops the generation at the next token."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncGenerator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from llmrouter.passthrough import stop_sequences_of
from services.providers.gateways.base import Completion, UpstreamError, UpstreamRequest

_END = object()
log = logging.getLogger("llmrouter.providers")


class LocalGateway:
    def __init__(self, model_dir: Path, max_concurrency: int, threads: int) -> None:
        from services.providers.local_model.engine import LocalEngine  # onnxruntime-genai loads only if used

        self.engine = LocalEngine(model_dir, threads=threads)
        self.workers = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="local-model")

    async def aclose(self) -> None:
        self.workers.shutdown(wait=False, cancel_futures=True)

    async def complete(self, request: UpstreamRequest) -> Completion:
        parts: list[str] = []
        end = Completion()
        async for event in self.stream(request):
            if isinstance(event, Completion):
                end = event
            else:
                parts.append(event)
        end.content = "".join(parts)
        return end

    async def stream(self, request: UpstreamRequest) -> AsyncGenerator[str | Completion, None]:
        from services.providers.local_model.engine import Outcome, PromptTooLong

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        stop = threading.Event()
        outcome = Outcome()
        turns = [(m.role, m.content) for m in request.messages]
        max_tokens = request.max_tokens or 256
        stop_sequences = stop_sequences_of(request.passthrough)  # the one passthrough field it honours (SENT_BY_KIND)

        def put(item: object) -> None:
            if stop.is_set():
                return
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop closed under us (shutdown): nobody is listening any more
                stop.set()

        def work() -> None:
            try:
                pieces = self.engine.stream(turns, max_tokens, outcome, request.temperature, stop, stop_sequences)
                for piece in pieces:
                    put(piece)
                put(_END)
            except Exception as exc:  # surfaced to the caller as an upstream failure
                put(exc)

        loop.run_in_executor(self.workers, work)
        try:
            while (item := await queue.get()) is not _END:
                if isinstance(item, PromptTooLong):
                    raise UpstreamError("context_length", str(item))
                if isinstance(item, Exception):
                    log.error("local generation failed", exc_info=item)  # details in the log, not to callers
                    raise UpstreamError("bad_response", "local model failed")
                yield str(item)
        finally:
            stop.set()
        yield Completion("", outcome.finish_reason, outcome.input_tokens, outcome.output_tokens)
