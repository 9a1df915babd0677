"""Calls to one provider made safe: a concurrency limit, a total deadline, retries with backoff of failures whose
cost is known (429, 5xx, a connection that never carried the request; a stream cut after events that said what it
consumed, which is charged), a circuit breaker per model, no retry once a streamed token reached the caller, and
exact usage and cost on every answer (and on every interrupted stream). A failure whose cost nobody knows (a
timeout, a malformed answer, a connection lost after the request was sent) is never retried: the caller owes it
at its worst case, and a retry would make the upstream generate, and bill, a second answer."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from decimal import Decimal

import grpc

from llmrouter.deadlines import MIN_SEND_S, PROVIDERS_MARGIN_S
from llmrouter.errors import USAGE_FINAL, ServiceError
from llmrouter.registry import ModelSpec, ProviderSpec
from llmrouter.server import MAX_MESSAGE_BYTES
from llmrouter.tokens import count_text_tokens
from llmrouter.upstream_messages import upstream_message
from llmrouter.v1 import common_pb2, provider_pb2
from services.providers import metrics
from services.providers.accounting import counted_output, decimal_str, implausible_input, input_bound, settle
from services.providers.backoff import retry_delay
from services.providers.breaker import CircuitBreaker, State
from services.providers.gateways.base import (
    Completion,
    Gateway,
    Refusal,
    StreamEvent,
    UpstreamError,
    UpstreamRequest,
    openai_finish_reason,
)
from services.providers.gateways.batch_client import ProviderBatches

_STATUS = {
    "timeout": (grpc.StatusCode.DEADLINE_EXCEEDED, "UPSTREAM_TIMEOUT", "timeout"),
    "rate_limited": (grpc.StatusCode.RESOURCE_EXHAUSTED, "UPSTREAM_RATE_LIMITED", "rate_limited"),
    "unavailable": (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", "error"),
    "bad_response": (grpc.StatusCode.INTERNAL, "UPSTREAM_ERROR", "error"),
    "rejected": (grpc.StatusCode.FAILED_PRECONDITION, "UPSTREAM_ERROR", "error"),
    "context_length": (grpc.StatusCode.INVALID_ARGUMENT, "CONTEXT_LENGTH_EXCEEDED", "error"),
    "lost": (grpc.StatusCode.INTERNAL, "UPSTREAM_CONNECTION_LOST", "error"),
}
# Failures that say something about the upstream's health; a 429 or a refused request does not.
_UNHEALTHY = {"timeout", "unavailable", "bad_response", "lost"}
# Failures after which nobody knows what the upstream generated: the router charges the attempt's worst case,
# which covers whatever it consumed, so that is not reported on top.
_UNKNOWN_OUTCOME = {"timeout", "bad_response", "lost"}
# Refusals the request as sent earns, whatever the upstream's health: a prompt past the model's context, or a 400 or
# 422 (bad input, or our own gateway's refusal of it before sending), the refusals the edge answers as the caller's
# (services/edge/app.py; any other it answers 502). Counted apart as outcome "refused", so that
# LLMRouterProviderHighErrorRatio never pages on a caller's mistakes (LLMRouterProviderRefusingMost watches them).
# Other 4xx (401/403: our key; 402: our account; 404: a model the registry names wrongly; 413: our body past the
# provider's limit) stay "error": they are the operator's to fix.
_REFUSED_STATUSES = frozenset({400, 422})

log = logging.getLogger("llmrouter.providers")
MAX_LOGPROBS_BYTES = 4 * 1024 * 1024  # well inside a reply's 16 MiB gRPC message, beside the answer itself
# The largest answer a reply carries: the gRPC message limit, less room for a stream chunk's wrapping. Only an upstream
# writing far past any honest answer (128k tokens are about 1 MB) reaches it; sent, the reply failed in gRPC itself.
MAX_REPLY_BYTES = MAX_MESSAGE_BYTES - (64 << 10)


class Dispatcher:
    def __init__(
        self,
        provider: str,
        spec: ProviderSpec,
        gateway: Gateway,
        secret: str = "",
        batches: ProviderBatches | None = None,
    ) -> None:
        self.provider = provider
        self.spec = spec
        self.gateway = gateway
        self.secret = secret
        self.batches = batches  # the provider's Batch API, when it has one spoken here
        self.slots = asyncio.Semaphore(spec.max_concurrency)
        self.breakers: dict[str, CircuitBreaker] = {}
        self._batch_calls = 0  # Batch API calls in flight, which hold no slot (calling_batches)
        self._no_batch_call = asyncio.Event()
        self._no_batch_call.set()

    async def aclose(self) -> None:
        await self.gateway.aclose()
        if self.batches is not None:
            await self.batches.aclose()

    async def drained(self) -> None:
        """Once no call holds a slot (every slot taken, for good: a retired dispatcher serves nothing more) and no
        Batch API call is in flight."""
        for _ in range(self.spec.max_concurrency):
            await self.slots.acquire()
        await self._no_batch_call.wait()

    @contextmanager
    def calling_batches(self) -> Iterator[None]:
        """A call of the provider's Batch API (an upload, a creation, a result file read): it holds no slot, yet a
        retired dispatcher is closed only once it ended. Cut, a creation's outcome is unknown, and the router holds
        each of its lines a day and charges its worst case."""
        self._batch_calls += 1
        self._no_batch_call.clear()
        try:
            yield
        finally:
            self._batch_calls -= 1
            if not self._batch_calls:
                self._no_batch_call.set()

    def breaker(self, model: str) -> CircuitBreaker:
        if model not in self.breakers:
            gauge = metrics.CIRCUIT.labels(self.provider, model)
            gauge.set(State.CLOSED)
            self.breakers[model] = CircuitBreaker(
                self.spec.breaker_failures, self.spec.breaker_cooldown_s, on_change=lambda s: gauge.set(s)
            )
        return self.breakers[model]

    async def generate(
        self, model: ModelSpec, request: UpstreamRequest, budget_s: float | None = None
    ) -> provider_pb2.GenerateResponse:
        start = time.perf_counter()
        deadline = self._deadline(budget_s)
        retries = 0
        try:
            async with self._slot(deadline):
                while True:
                    breaker, heard = self._admit(model), time.perf_counter()
                    try:
                        async with asyncio.timeout_at(deadline):
                            completion = await self.gateway.complete(request)
                    except (UpstreamError, TimeoutError) as exc:
                        # Cut (its deadline), a unary call's usage is never known: it comes in the one body with the
                        # answer, parsed only whole. So it stays an unknown outcome, its worst case owed (a stream's
                        # usage can come before its cut: generate_stream).
                        err = self._judge(breaker, exc, budget_s, heard)
                        await self._backoff(model, request, err, retries, deadline)
                        retries += 1
                        continue
                    except BaseException:  # cancelled, or a gateway's bug: no verdict; a half-open probe freed
                        breaker.release()
                        raise
                    breaker.success()
                    break
        finally:
            metrics.DURATION.labels(self.provider, model.name).observe(time.perf_counter() - start)
        return await self._response(model, request, completion, retries, start)

    async def generate_stream(
        self,
        model: ModelSpec,
        request: UpstreamRequest,
        budget_s: float | None = None,
        retry_budget: Decimal | None = None,
        tool_call_progress: bool = False,
        input_progress: bool = False,
        cue: Callable[[], Awaitable[None]] | None = None,
        refusal_progress: bool = False,
        usage_final: bool = False,
        budget_pricing: ModelSpec | None = None,
    ) -> AsyncGenerator[provider_pb2.GenerateChunk, None]:
        """Retried before the first delivered token; what failed attempts consumed is reported on top, and no
        attempt is retried once that, priced as `budget_pricing` prices it (the caller's admitted prices; None: the
        model's), exceeds `retry_budget` (USD; None: no limit). With `tool_call_progress`, the
        output tokens of the attempt's tool calls so far are told as they grow (a `tool_call_tokens` chunk); with
        `input_progress`, the attempt's input once the upstream reports it (an `input` chunk); with
        `refusal_progress`, the model's refusal as it streams in (`refusal_delta` chunks; without it, the refusal
        comes whole in the final chunk only). With `cue`, the upstream is reached only once it returns, after a
        `ready_to_send` chunk (GenerateStreamOnCue). With `usage_final`, an attempt failed with an otherwise unknown
        outcome (its deadline, a malformed event, the connection lost) after its upstream reported its whole usage
        fails with that usage, marked so (without it, a caller of a version before would charge it on top of the
        attempt's worst case)."""
        start = time.perf_counter()
        deadline = self._deadline(budget_s)
        retries = 0
        delivered: list[str] = []
        # The refusal's pieces: delivered as the content's are (no retry after one; charged when the stream is cut),
        # to a caller that did not ask for them too, since it gets them whole in the final chunk.
        refused: list[str] = []
        wasted = Wasted(budget_pricing or model)  # what attempts that failed before delivering anything consumed
        reported_whole = False  # whether the last attempt, failed, had reported its whole usage (in `wasted`)
        try:
            async with self._slot(deadline):
                if cue is not None:
                    yield provider_pb2.GenerateChunk(ready_to_send=True)
                    await self._unsent_until(
                        deadline, cue(), "the caller did not let the request go within the total timeout"
                    )
                    self._refuse_unless_time_to_send(deadline)
                while True:
                    breaker, heard = self._admit(model), time.perf_counter()
                    end = Completion()  # usage of a failed attempt must not leak into the next one
                    tool_tokens = 0  # of this attempt's tool calls, counted piece by piece
                    events = self.gateway.stream(request)
                    try:
                        while (event := await _next(events, deadline)) is not None:
                            heard = time.perf_counter()  # alive: the silence the breaker judges starts again
                            if isinstance(event, Completion):
                                _merge(end, event)
                                # An input the prompt belies is told as none: the router counts it, should its
                                # caller leave before the end.
                                if input_progress and await _told_input(model, request, event):
                                    yield provider_pb2.GenerateChunk(input=_input_usage(end))
                                if tool_call_progress and event.tool_text:
                                    tool_tokens += await count_text_tokens(event.tool_text, model.estimating_encoding)
                                    yield provider_pb2.GenerateChunk(tool_call_tokens=tool_tokens)
                                continue
                            if not delivered and not refused:
                                metrics.TTFT.labels(self.provider, model.name).observe(time.perf_counter() - start)
                            if isinstance(event, Refusal):
                                refused.append(event.text)
                                if refusal_progress:
                                    yield provider_pb2.GenerateChunk(refusal_delta=event.text)
                                continue
                            delivered.append(event)
                            yield provider_pb2.GenerateChunk(delta=event)
                    except (UpstreamError, TimeoutError) as exc:
                        err = self._judge(breaker, exc, budget_s, heard)
                        if delivered or refused:
                            served = "".join(delivered) + "".join(refused)
                            raise await self._interrupted(model, request, served, end, err, wasted) from None
                        if err.kind not in _UNKNOWN_OUTCOME:
                            consumed = exc.consumed if isinstance(exc, UpstreamError) else None
                            await wasted.add(model, request, end, consumed)
                        else:
                            # Cut (the caller's deadline, a malformed event, the connection lost) after the upstream
                            # said it was done and what it bills, before its stream's end marker (OpenAI's [DONE],
                            # Anthropic's message_stop): the bill is known, so it is charged, not the attempt's worst
                            # case, when the counts hold.
                            # Before that, what it generates is unknown (never retried: its worst case is owed).
                            reported_whole = (
                                usage_final and _finished(end) and await wasted.add_exact(model, request, end)
                            )
                        if retry_budget is not None and wasted.budget_cost > retry_budget:
                            # Another attempt could write its all on top: past what the caller holds for the call.
                            raise self._failure(model, request, err, retries, wasted, reported_whole) from None
                        if wasted.consumed_tokens and not reported_whole:
                            # Said before the retry: a caller that leaves during it still knows what to charge. Not
                            # the usage of an attempt cut after its whole usage, which no retry follows: a caller that
                            # got it but not the failure (it left between them) owes the worst case on top.
                            yield provider_pb2.GenerateChunk(consumed=wasted.response())
                        await self._backoff(model, request, err, retries, deadline, wasted, reported_whole)
                        retries += 1
                        continue
                    except BaseException:  # cancelled, closed, or a gateway's bug: no verdict; the probe freed
                        breaker.release()
                        raise
                    finally:
                        await events.aclose()  # closes the HTTP stream: cancellation reaches the upstream
                    breaker.success()
                    break
        finally:
            metrics.DURATION.labels(self.provider, model.name).observe(time.perf_counter() - start)
        end.content, end.refusal = "".join(delivered), "".join(refused)
        final = await self._response(model, request, end, retries, start, wasted, streamed=True)
        yield provider_pb2.GenerateChunk(final=final)

    def _deadline(self, budget_s: float | None) -> float:
        """The provider's total timeout, shortened to just before the caller's own gRPC deadline when that
        comes first: no retry is scheduled past it, and the caller gets the real error in time rather than a
        bare DEADLINE_EXCEEDED."""
        total = self.spec.total_timeout_s
        if budget_s is not None:
            total = min(total, max(0.0, budget_s - PROVIDERS_MARGIN_S))
        return asyncio.get_running_loop().time() + total

    @asynccontextmanager
    async def _slot(self, deadline: float) -> AsyncIterator[None]:
        """Hold one of the provider's concurrency slots, with time left to send the request, waiting for it no
        later than the last moment to send it."""
        busy = f"no free slot within the total timeout ({self.spec.max_concurrency} busy)"
        await self._unsent_until(deadline, self.slots.acquire(), busy)
        try:
            self._refuse_unless_time_to_send(deadline)
            yield
        finally:
            self.slots.release()

    async def _unsent_until(self, deadline: float, step: Awaitable[object], late: str) -> None:
        """Await a step that comes before the request is sent, but not past the last moment to send it."""
        try:
            async with asyncio.timeout_at(_send_by(deadline)):
                await step
        except TimeoutError:
            raise self._unsent(late) from None

    def _refuse_unless_time_to_send(self, deadline: float) -> None:
        """Before the first attempt only: an attempt with no time to send would time out with its outcome unknown,
        charged its worst case. A retry's time is the backoff's to judge, which reports the failure before it."""
        if asyncio.get_running_loop().time() >= _send_by(deadline):
            raise self._unsent("too little of the caller's deadline left to send the request")

    def _unsent(self, why: str) -> ServiceError:
        return ServiceError(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "UPSTREAM_TIMEOUT",
            f"{self.provider}: {why}",
            {"sent": "false"},  # nothing reached the upstream: nothing to pay
        )

    def _admit(self, model: ModelSpec) -> CircuitBreaker:
        breaker = self.breaker(model.name)
        if not breaker.allow():
            metrics.REQUESTS.labels(self.provider, model.name, "circuit_open").inc()
            raise ServiceError(
                grpc.StatusCode.UNAVAILABLE,
                "CIRCUIT_OPEN",
                f"{self.provider}/{model.name}: circuit open after repeated failures",
                {"provider": self.provider, "model": model.name},
            )
        return breaker

    def _judge(
        self, breaker: CircuitBreaker, exc: UpstreamError | TimeoutError, budget_s: float | None, heard: float
    ) -> UpstreamError:
        """Record what a failed attempt says about the upstream's health: nothing when the caller's own deadline,
        shorter than the provider's total timeout, ended it before the upstream had been silent breaker_min_wait_s
        (since the request was sent, or a stream's last event: a caller in a hurry, not an upstream unwell). The
        gateway's read timeout is the operator's and always counts."""
        hurried = (
            isinstance(exc, TimeoutError)
            and budget_s is not None
            and budget_s - PROVIDERS_MARGIN_S < self.spec.total_timeout_s
            and time.perf_counter() - heard < self.spec.breaker_min_wait_s
        )
        if isinstance(exc, TimeoutError):
            exc = UpstreamError("timeout", "no answer within the call's deadline")
        if exc.kind in _UNHEALTHY and not hurried:
            breaker.failure()
        else:
            breaker.release()
        return exc

    async def _backoff(
        self,
        model: ModelSpec,
        request: UpstreamRequest,
        err: UpstreamError,
        retries: int,
        deadline: float,
        wasted: Wasted | None = None,
        reported_whole: bool = False,
    ) -> None:
        """Sleep before the next attempt, or raise when retrying is not allowed or the retry could not be sent in
        time. Raised, it is this failure, with what the failed attempts consumed: never an unsent refusal, since the
        attempts before were sent."""
        delay = retry_delay(retries, self.spec.backoff_base_s, self.spec.backoff_max_s, err.retry_after)
        give_up = not err.retryable or retries >= self.spec.max_retries
        loop = asyncio.get_running_loop()
        if give_up or loop.time() + delay >= _send_by(deadline):
            raise self._failure(model, request, err, retries, wasted, reported_whole)
        log.warning(
            "retrying upstream call", extra={**self._log_fields(model, request, err), "delay_s": round(delay, 3)}
        )
        await asyncio.sleep(delay)
        if loop.time() >= _send_by(deadline):  # the sleep ended late (a busy event loop)
            raise self._failure(model, request, err, retries, wasted, reported_whole)
        metrics.RETRIES.labels(self.provider, model.name).inc()

    def _log_fields(self, model: ModelSpec, request: UpstreamRequest, err: UpstreamError) -> dict[str, str]:
        return {
            "provider": self.provider,
            "model": model.name,
            "request_id": request.request_id,
            "error": self.redact(err.message),
        }

    def _failure(
        self,
        model: ModelSpec,
        request: UpstreamRequest,
        err: UpstreamError,
        retries: int,
        wasted: Wasted | None,
        reported_whole: bool = False,
    ) -> ServiceError:
        code, reason, _ = _STATUS[err.kind]
        metrics.REQUESTS.labels(self.provider, model.name, _outcome(err)).inc()
        log.warning("upstream call failed", extra={**self._log_fields(model, request, err), "retries": retries})
        metadata = {"provider": self.provider, "model": model.name, "retries": str(retries)}
        if err.status is not None:
            metadata["upstream_status"] = str(err.status)
        if err.retry_after is not None:
            metadata["retry_after_s"] = retry_after_header(err.retry_after)
        # Tokens the failed attempts consumed: the caller charges them, at the prices it admitted the request at. Told
        # whenever there are any, even priced at nothing here (a free model, or a registry reloaded to a price of 0
        # the caller did not admit at): left out, the caller had no measure and charged 0 for tokens the upstream bills.
        if wasted and wasted.consumed_tokens:
            metadata.update(wasted.metadata())
        if reported_whole and err.kind in _UNKNOWN_OUTCOME:
            # Of a failure that is otherwise of unknown outcome, its usage is known whole (in the metadata): the
            # caller charges that, not the attempt's worst case.
            metadata[USAGE_FINAL] = "true"
        # The provider's own words (logged above) stay here: the caller is told the kind of failure alone.
        return ServiceError(code, reason, upstream_message(reason, metadata), metadata)

    async def _interrupted(
        self,
        model: ModelSpec,
        request: UpstreamRequest,
        served: str,
        end: Completion,
        err: UpstreamError,
        wasted: Wasted,
    ) -> ServiceError:
        """The caller already holds part of the answer: fail, charging exactly what was served, the tool calls the
        upstream had streamed so far (generated and sent, so billed, though a caller gets them only whole), and
        what attempts that failed before it consumed."""
        output = served + (json.dumps(end.tool_calls) if end.tool_calls else "")
        # What the upstream sent, counted here, unless it said it generated more: its count is cumulative (Anthropic's
        # message_delta, OpenAI's usage chunk, sent once it finished generating) and what it bills.
        counted, reported = await counted_output(model, request, output), end.output_tokens
        exact = reported is not None and reported >= counted
        output_tokens = reported if exact else counted
        usage, cost = await settle(model, request, output, end.input_tokens, output_tokens, *_cache_counts(end))
        usage.estimated |= not exact
        return self._cut(model, request, err, *wasted.on_top(usage, cost))

    def _cut(
        self, model: ModelSpec, request: UpstreamRequest, err: UpstreamError, usage: common_pb2.Usage, cost: str
    ) -> ServiceError:
        """A stream failed after its caller got part of the answer: charged `usage`, priced `cost`."""
        metrics.REQUESTS.labels(self.provider, model.name, _outcome(err)).inc()
        log.warning("upstream stream interrupted", extra=self._log_fields(model, request, err))
        self._count_tokens(model, usage.input_tokens, usage.output_tokens)
        metadata = {
            "provider": self.provider,
            "model": model.name,
            "cause": _STATUS[err.kind][1],
            **usage_metadata(usage),
            "cost_usd": cost,
        }
        return ServiceError(
            grpc.StatusCode.UNAVAILABLE,
            "STREAM_INTERRUPTED",
            upstream_message("STREAM_INTERRUPTED", metadata),
            metadata,
        )

    async def _response(
        self,
        model: ModelSpec,
        request: UpstreamRequest,
        done: Completion,
        retries: int,
        start: float,
        wasted: Wasted | None = None,
        streamed: bool = False,
    ) -> provider_pb2.GenerateResponse:
        tool_calls = json.dumps(done.tool_calls) if done.tool_calls else ""
        # Without the provider's count, the refusal and the tool calls are output too, the calls as their JSON.
        output = done.content + done.refusal + tool_calls
        usage, cost = await settle(model, request, output, done.input_tokens, done.output_tokens, *_cache_counts(done))
        if wasted is not None:
            usage, cost = wasted.on_top(usage, cost)
        reply = provider_pb2.GenerateResponse(
            content=done.content,
            refusal=done.refusal,
            usage=usage,
            cost_usd=cost,
            finish_reason=openai_finish_reason(done.finish_reason),
            model=model.name,
            provider=self.provider,
            retries=retries,
            latency_ms=int((time.perf_counter() - start) * 1000),
            tool_calls_json=tool_calls,
            mean_logprob=done.mean_logprob,
            logprobs_json=_callers_logprobs(done, request),
        )
        size = reply.ByteSize()  # upb serializes the message to tell it: 0.1 s for 100 MB, done once
        if size > MAX_REPLY_BYTES:
            err = UpstreamError("bad_response", f"answer of {size} bytes, past what a reply carries")
            if not streamed:  # as a malformed answer: generated, undelivered, owed at its worst case
                raise self._failure(model, request, err, retries, None)
            # Its deltas were delivered, and what it bills is known: cut at its end, charged that usage.
            raise self._cut(model, request, err, usage, cost)
        metrics.REQUESTS.labels(self.provider, model.name, "ok").inc()
        self._count_tokens(model, usage.input_tokens, usage.output_tokens)
        return reply

    def _count_tokens(self, model: ModelSpec, input_tokens: int, output_tokens: int) -> None:
        metrics.TOKENS.labels(self.provider, model.name, "input").inc(input_tokens)
        metrics.TOKENS.labels(self.provider, model.name, "output").inc(output_tokens)

    def redact(self, text: str) -> str:
        """The text without this provider's API key, which providers quote when they refuse it."""
        return text.replace(self.secret, "[redacted]") if self.secret else text


# The longest wait told to a caller: a provider's Retry-After of years (or one that overflowed to infinity) says no
# more than "not soon".
MAX_RETRY_AFTER_S = 86_400


def retry_after_header(seconds: float) -> str:
    """A provider's wait as the edge's Retry-After header must carry it: whole seconds (RFC 9110 delay-seconds,
    which clients parse as an integer), rounded up so no retry comes early. "1.5" (from retry-after-ms),
    "3.99812" (an HTTP date) or "inf" made clients that parse it strictly (urllib3) fail."""
    return str(math.ceil(min(seconds, MAX_RETRY_AFTER_S)))


def _outcome(err: UpstreamError) -> str:
    """The failure's `outcome` in llmrouter_provider_requests_total: "refused" when the request itself earned it."""
    refused = err.kind == "context_length" or (err.kind == "rejected" and err.status in _REFUSED_STATUSES)
    return "refused" if refused else _STATUS[err.kind][2]


def _send_by(deadline: float) -> float:
    """The last moment an attempt may start: it needs MIN_SEND_S to reach its upstream before the deadline."""
    return deadline - MIN_SEND_S


async def _next(events: AsyncGenerator[StreamEvent, None], deadline: float) -> StreamEvent | None:
    """The next event, bounded by the call's deadline; None at the end of the stream."""
    async with asyncio.timeout_at(deadline):
        try:
            return await anext(events)
        except StopAsyncIteration:
            return None


def _callers_logprobs(done: Completion, request: UpstreamRequest) -> str:
    """The answer's log-probabilities when its caller asked for them (those the router asks for itself, a confidence
    signal, are not part of its answer), within MAX_LOGPROBS_BYTES: a long answer's with many alternatives per token
    (about 2 KB a token at top_logprobs 20) would not fit the reply's gRPC message, and the answer, paid for, would be
    lost with them. Past it the answer goes without them (null), said in the log."""
    if not (done.logprobs and request.passthrough.get("logprobs")):
        return ""
    text = json.dumps(done.logprobs)
    if len(text) > MAX_LOGPROBS_BYTES:
        log.warning("log-probabilities too large for the reply; answer sent without them", extra={"bytes": len(text)})
        return ""
    return text


def _merge(into: Completion, update: Completion) -> None:
    """Streams report usage in pieces (Anthropic: input at the start, output at the end), tool calls at the end."""
    into.finish_reason = update.finish_reason or into.finish_reason
    if update.input_tokens is not None:  # with what of it the prompt cache served
        into.input_tokens = update.input_tokens
        into.cached_input_tokens, into.cache_write_input_tokens = _cache_counts(update)
    if update.output_tokens is not None:
        into.output_tokens = update.output_tokens
    into.tool_calls = update.tool_calls or into.tool_calls
    into.logprobs = update.logprobs or into.logprobs


async def _told_input(model: ModelSpec, request: UpstreamRequest, event: Completion) -> bool:
    return event.input_tokens is not None and not await implausible_input(model, request, event.input_tokens)


def _input_usage(end: Completion) -> common_pb2.Usage:
    """The input an upstream reported for the attempt, with what of it the prompt cache served and took."""
    assert end.input_tokens is not None  # told only once reported
    cached, written = _cache_counts(end)
    return common_pb2.Usage(input_tokens=end.input_tokens, cached_input_tokens=cached, cache_write_input_tokens=written)


def _cache_counts(done: Completion) -> tuple[int, int]:
    """Of a generation's input, the tokens read from and written to the provider's prompt cache."""
    return done.cached_input_tokens, done.cache_write_input_tokens


def usage_metadata(usage: common_pb2.Usage) -> dict[str, str]:
    """A failure's usage as its error metadata carries it (the router prices these tokens)."""
    return {
        "input_tokens": str(usage.input_tokens),
        "cached_input_tokens": str(usage.cached_input_tokens),
        "cache_write_input_tokens": str(usage.cache_write_input_tokens),
        "output_tokens": str(usage.output_tokens),
        "estimated": "true" if usage.estimated else "false",
    }


class Wasted:
    """Usage of stream attempts that failed before delivering anything but had the upstream generating: it
    bills them, so they are added to the final usage (or the failure's metadata) and charged."""

    def __init__(self, budget_pricing: ModelSpec) -> None:
        self.usage = common_pb2.Usage()
        self.cost = Decimal(0)
        # The same at the prices the caller holds for the call at, which its retry budget is room at: this service's
        # registry is reloaded on its own (and of another version during a rolling upgrade).
        self.budget_pricing = budget_pricing
        self.budget_cost = Decimal(0)

    async def add_exact(self, model: ModelSpec, request: UpstreamRequest, end: Completion) -> bool:
        """Adds the attempt's usage if its upstream reported it all, none of it belied (settle): whether it did.
        Counted here instead, it would be charged beside the attempt's worst case, twice."""
        usage, cost = await _settled(model, request, end)
        if usage.estimated:
            return False
        self._add(usage, cost)
        return True

    async def add(
        self, model: ModelSpec, request: UpstreamRequest, end: Completion, consumed: Completion | None
    ) -> None:
        if consumed is not None:
            _merge(end, consumed)
        elif end.input_tokens is None and end.output_tokens is None:
            return  # the upstream never began answering: nothing billed
        self._add(*await _settled(model, request, end))

    def _add(self, usage: common_pb2.Usage, cost: str) -> None:
        self.usage, self.cost = summed(self.usage, usage), self.cost + Decimal(cost)
        self.budget_cost += self.budget_pricing.usage_cost_usd(usage)

    @property
    def consumed_tokens(self) -> bool:
        """Whether the failed attempts consumed any tokens: told to the caller, who prices them, whatever they cost
        here."""
        usage = self.usage
        return any((usage.input_tokens, usage.output_tokens, usage.cached_input_tokens, usage.cache_write_input_tokens))

    def on_top(self, usage: common_pb2.Usage, cost: str) -> tuple[common_pb2.Usage, str]:
        if not self.consumed_tokens:
            return usage, cost
        return summed(usage, self.usage), decimal_str(Decimal(cost) + self.cost)

    def response(self) -> provider_pb2.GenerateResponse:
        return provider_pb2.GenerateResponse(usage=self.usage, cost_usd=decimal_str(self.cost))

    def metadata(self) -> dict[str, str]:
        return {**usage_metadata(self.usage), "cost_usd": decimal_str(self.cost)}


async def _settled(model: ModelSpec, request: UpstreamRequest, end: Completion) -> tuple[common_pb2.Usage, str]:
    """What a failed attempt consumed, its tool calls so far the output when no count is reported."""
    calls = json.dumps(end.tool_calls) if end.tool_calls else ""
    # Unreported (OpenAI-style streams say it only at their end), or reported as too little (implausible_input), the
    # prompt is billed whole all the same: counted as high as the router holds for it, so the retry budget is
    # never passed by what went uncounted.
    told = await _told_input(model, request, end)
    billed_input = end.input_tokens if told else await input_bound(model, request)
    cache = _cache_counts(end) if told else (0, 0)  # a belied report's parts of the input are no more believed
    usage, cost = await settle(model, request, calls, billed_input, end.output_tokens, *cache)
    usage.estimated |= not told
    return usage, cost


def _finished(end: Completion) -> bool:
    """Whether a stream said it finished and what it bills: its finish and both counts, which come last (Anthropic's
    message_delta, OpenAI's usage chunk after its finish_reason). Nothing the upstream bills can follow them."""
    return bool(end.finish_reason) and end.input_tokens is not None and end.output_tokens is not None


def summed(one: common_pb2.Usage, other: common_pb2.Usage) -> common_pb2.Usage:
    """Two generations' usage as one: estimated when either was."""
    return common_pb2.Usage(
        input_tokens=one.input_tokens + other.input_tokens,
        output_tokens=one.output_tokens + other.output_tokens,
        estimated=one.estimated or other.estimated,
        cached_input_tokens=one.cached_input_tokens + other.cached_input_tokens,
        cache_write_input_tokens=one.cache_write_input_tokens + other.cache_write_input_tokens,
    )
