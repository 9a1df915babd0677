"""Provider batches: requests for one model sent through its provider's Batch API, and their results read back,
each answer costed at the model's batch price (what the provider bills for it; at its own price when the registry lost
the batch price after the batch was created: poll_api)."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable

import grpc

from llmrouter.errors import ServiceError, invalid
from llmrouter.registry import ModelSpec, Registry
from llmrouter.server import MAX_MESSAGE_BYTES
from llmrouter.v1 import common_pb2, provider_pb2
from services.providers.accounting import count_implausible, decimal_str, implausible_output
from services.providers.dispatch import MAX_LOGPROBS_BYTES, Dispatcher
from services.providers.gateways.base import UpstreamError, UpstreamRequest, openai_finish_reason
from services.providers.gateways.batch_client import LineResult, NotCreated, ProviderBatches, unreadable

log = logging.getLogger("llmrouter.providers")
# The log-probabilities one poll's reply carries in all: its answers (a line of a result file may be 8 MiB, most of
# it log-probabilities) must still fit its one gRPC message, or no answer of the part is ever read, and each line is
# charged its hold at the window's end.
POLL_LOGPROBS_BYTES = MAX_MESSAGE_BYTES // 2
# And the most its results take in all, for a caller that reads the rest in another poll (`partial`): long answers
# (50 of 400 KB) passed the message too, and no answer of the part was ever read.
POLL_REPLY_BYTES = MAX_MESSAGE_BYTES // 2
# A batch id is a segment of the upstream URL it is read at (/batches/{id}): one with '/', '..', '?' or '#' would have
# the provider's key read another path of its API. Providers' ids are plain tokens (batch_..., msgbatch_..., UUIDs).
BATCH_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,255}")
UNREADABLE = (
    "the provider batch cannot be read: the provider no longer knows it, refuses its read, or its results are too large"
)


def batch_api(registry: Registry, model: ModelSpec, dispatcher: Dispatcher) -> tuple[ProviderBatches, ModelSpec]:
    """The model's Batch API and the model at its batch price; BATCH_NOT_CREATED when it has none here."""
    priced = registry.batch_priced(model)
    if dispatcher.batches is None or priced is None:
        raise not_created(f"model {model.name!r} has no Batch API and batch price here")
    return dispatcher.batches, priced


def poll_api(registry: Registry, model: ModelSpec, dispatcher: Dispatcher) -> tuple[ProviderBatches, ModelSpec]:
    """The model's Batch API, to read a batch created on it, and the model its answers are costed at: at its batch
    price, or at its own once that is gone from the registry (the batch ran all the same; the router charges each
    line at the prices it was admitted with). BATCH_NOT_CREATED when it has no Batch API here."""
    if dispatcher.batches is None:
        raise not_created(f"model {model.name!r} has no Batch API here")
    return dispatcher.batches, registry.batch_priced(model) or model


async def submit(
    api: ProviderBatches, requests: list[tuple[str, UpstreamRequest]], redact: Callable[[str], str]
) -> str:
    """A provider batch of (custom_id, request): its id. `redact` takes the provider's key out of what is logged."""
    ids = [custom_id for custom_id, _ in requests]
    if not ids or len(ids) > api.max_requests:
        raise invalid(f"a batch holds 1 to {api.max_requests} requests", "requests")
    if len(set(ids)) != len(ids) or not all(ids):
        raise invalid("every request of a batch needs its own non-empty request_id", "requests")
    try:  # a request this provider cannot take: nothing sent, the lines run realtime (and fail there alone)
        bodies = [(custom_id, api.body(request)) for custom_id, request in requests]
    except UpstreamError as exc:
        raise not_created(f"a request cannot go into a batch: {exc.message}") from None
    # The provider's own words are logged, never told: they may quote the operator's account or an internal host.
    try:
        return await api.submit(bodies)
    except NotCreated as exc:
        log.warning("batch not created", extra={"error": redact(str(exc))})
        raise not_created("the provider created no batch") from None
    except UpstreamError as exc:
        log.warning("batch creation outcome unknown", extra={"error": redact(exc.message)})
        raise ServiceError(
            grpc.StatusCode.UNAVAILABLE, "BATCH_OUTCOME_UNKNOWN", "the provider batch's creation had an unknown outcome"
        ) from None


async def poll(
    api: ProviderBatches,
    priced: ModelSpec,
    batch_id: str,
    request_ids: list[str],
    redact: Callable[[str], str],
    partial: bool = False,
) -> provider_pb2.PollBatchResponse:
    """The batch's state and, once ended, the results of `request_ids` (all when empty), in their order; `partial`:
    only the first that fit POLL_REPLY_BYTES, the others named in unread_ids. `redact` as submit's."""
    if not BATCH_ID.fullmatch(batch_id):
        raise invalid("batch_id must be a provider's batch id (letters, digits, '_', '.', ':', '-')", "batch_id")
    try:
        state = await api.poll(batch_id, frozenset(request_ids))
    except UpstreamError as exc:
        log.warning("batch not read", extra={"batch": batch_id, "error": redact(exc.message)})
        if unreadable(exc):  # no try will read it: the router gives its lines up near their window's end at once
            raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION, "BATCH_UNREADABLE", UNREADABLE) from None
        raise ServiceError(
            grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", "the provider batch could not be read"
        ) from None
    order = {request_id: i for i, request_id in reversed(list(enumerate(request_ids)))}
    answers = [await _result(priced, r) for r in state.results]
    results = sorted(answers, key=lambda r: order.get(r.request_id, 0))
    room = POLL_LOGPROBS_BYTES
    for result in results:
        size = len(result.response.logprobs_json)
        if size > min(room, MAX_LOGPROBS_BYTES):  # as Complete's answer: without them (null), said in the log
            log.warning(
                "batch line's log-probabilities too large for the reply; answer sent without them",
                extra={"custom_id": result.request_id, "bytes": size},
            )
            result.response.logprobs_json = ""
        else:
            room -= size
    unread: list[str] = []
    if partial and request_ids:
        results, unread = _within_reply(results, request_ids)
    return provider_pb2.PollBatchResponse(status=state.status, ended=state.ended, results=results, unread_ids=unread)


def _within_reply(
    results: list[provider_pb2.BatchLineResult], request_ids: list[str]
) -> tuple[list[provider_pb2.BatchLineResult], list[str]]:
    """The results (in request_ids' order) of the first request ids whose results fit POLL_REPLY_BYTES, the first's
    whatever their size; and the request ids left out."""
    by_id: dict[str, list[provider_pb2.BatchLineResult]] = {}
    for result in results:
        by_id.setdefault(result.request_id, []).append(result)  # a provider's duplicates go together
    kept: list[provider_pb2.BatchLineResult] = []
    size = 0
    for i, request_id in enumerate(request_ids):
        own = by_id.pop(request_id, [])
        weight = sum(result.ByteSize() + len(request_id) for result in own)
        if i and size + weight > POLL_REPLY_BYTES:
            log.info("batch results read in part", extra={"results": len(kept), "unread": len(request_ids) - i})
            return kept, request_ids[i:]
        kept.extend(own)
        size += weight
    return kept, []


async def _result(priced: ModelSpec, line: LineResult) -> provider_pb2.BatchLineResult:
    answer = line.answer
    if answer is None:
        return provider_pb2.BatchLineResult(request_id=line.custom_id, error=line.error)
    tool_calls = json.dumps(answer.tool_calls) if answer.tool_calls else ""
    # Without the provider's counts the usage is unknown here (the prompt is not at hand): flagged, and the router
    # charges such a line its worst case. So are counts its answer belies (no input: every line has a prompt; no
    # output, or far too little, for the answer it holds), as accounting.settle takes them for a realtime answer.
    input_tokens, output_tokens = answer.input_tokens, answer.output_tokens
    if input_tokens == 0:
        count_implausible(priced, "input")
        input_tokens = None
    written = answer.content + answer.refusal + tool_calls
    if output_tokens is not None and await implausible_output(priced, None, written, output_tokens):
        count_implausible(priced, "output")
        output_tokens = None
    usage = common_pb2.Usage(
        input_tokens=input_tokens or 0,
        output_tokens=output_tokens or 0,
        estimated=input_tokens is None or output_tokens is None,
        cached_input_tokens=answer.cached_input_tokens,
        cache_write_input_tokens=answer.cache_write_input_tokens,
    )
    return provider_pb2.BatchLineResult(
        request_id=line.custom_id,
        succeeded=True,
        response=provider_pb2.GenerateResponse(
            content=answer.content,
            refusal=answer.refusal,
            usage=usage,
            cost_usd=decimal_str(priced.usage_cost_usd(usage)),
            finish_reason=openai_finish_reason(answer.finish_reason),
            model=priced.name,
            tool_calls_json=tool_calls,
            # A batch line is sent as its caller wrote it (the router asks no log-probabilities of its own there).
            logprobs_json=json.dumps(answer.logprobs) if answer.logprobs else "",
        ),
    )


def not_created(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.FAILED_PRECONDITION, "BATCH_NOT_CREATED", message)
