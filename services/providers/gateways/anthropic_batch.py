"""Anthropic's Message Batches API: a batch created with its requests inline (POST /v1/messages/batches,
{"requests": [{custom_id, params}]}), its processing_status read (GET /v1/messages/batches/{id}: in_progress,
canceling, ended) and, once ended, its results read (GET /v1/messages/batches/{id}/results): JSONL, one line per
request, {custom_id, result: succeeded (with the message) | errored | canceled | expired}.

A custom_id must match ^[a-zA-Z0-9_-]{1,64}$, which our request ids need not: each is sent as its SHA-256 digest
(64 hex digits) and mapped back from the ids a poll asks for."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from llmrouter.registry import ProviderSpec
from services.providers.gateways.anthropic import API_VERSION, body, completion
from services.providers.gateways.base import UpstreamError, UpstreamRequest
from services.providers.gateways.batch_client import (
    BatchClient,
    BatchState,
    LineResult,
    creation_failed,
    json_object,
    text_field,
)
from services.providers.gateways.http import loads

log = logging.getLogger("llmrouter.providers")

PATH = "/v1/messages/batches"
ENDED = "ended"
# The results of lines the provider did not run, said in our words.
FAILURES = {
    "expired": "the provider's processing window expired before the line ran",
    "canceled": "the provider batch was canceled before the line ran",
}


def custom_id(request_id: str) -> str:
    """The custom_id a request id is sent as: its digest, in the alphabet and length Anthropic allows."""
    return hashlib.sha256(request_id.encode()).hexdigest()


class AnthropicBatches:
    max_requests = 100_000  # Anthropic's limit per batch

    def __init__(self, spec: ProviderSpec, api_key: str) -> None:
        headers = {"anthropic-version": API_VERSION, **({"x-api-key": api_key} if api_key else {})}
        self.client = BatchClient(spec, headers)

    async def aclose(self) -> None:
        await self.client.aclose()

    def body(self, request: UpstreamRequest) -> dict[str, Any]:
        return body(request)

    async def submit(self, lines: list[tuple[str, dict[str, Any]]]) -> str:
        """The id of a new batch of (request id, Messages body) lines. NotCreated when the provider is known to
        have created none; UpstreamError when that is unknown (the creation's reply was lost)."""
        requests = [{"custom_id": custom_id(request_id), "params": params} for request_id, params in lines]
        try:
            batch = await self.client.call("POST", PATH, json={"requests": requests})
        except UpstreamError as exc:
            raise creation_failed(exc) from None
        return text_field(batch, "id")

    async def poll(self, batch_id: str, wanted: frozenset[str] = frozenset()) -> BatchState:
        """The batch's status and, once it has ended, the results of the `wanted` request ids (when empty: every
        line's, keyed by the custom_id sent)."""
        batch = await self.client.call("GET", f"{PATH}/{batch_id}")
        status = text_field(batch, "processing_status")
        state = BatchState(status, status == ENDED)
        # results_url says the results are there; they are read from the provider's own address all the same, so
        # its key never goes to one a reply names.
        if state.ended and batch.get("results_url"):
            request_ids = {custom_id(request_id): request_id for request_id in wanted}
            found: dict[str, LineResult] = {}
            await self.client.results(
                f"{PATH}/{batch_id}/results", lambda sent: not wanted or sent in request_ids, _line, found
            )
            state.results = [
                LineResult(request_ids.get(sent, sent), line.answer, line.error) for sent, line in found.items()
            ]
        return state


def _line(raw: str) -> LineResult:
    """One results line, {custom_id, result: {type, message | error}}; one of an unknown type, or a succeeded one
    without a message, is malformed."""
    entry = loads(raw, "batch result line")
    sent = entry.get("custom_id")
    if not isinstance(sent, str):
        raise UpstreamError("bad_response", "batch result line without a custom_id")
    result = json_object(entry.get("result"))
    kind = result.get("type")
    if kind == "succeeded":
        return LineResult(sent, completion(json_object(result.get("message"))))
    if isinstance(kind, str) and kind in FAILURES:
        return LineResult(sent, None, FAILURES[kind])
    if kind != "errored":
        raise UpstreamError("bad_response", "batch result line neither answered nor failed")
    # Our own words: the provider's message may quote the operator's organisation; it is logged for them.
    error = json_object(json_object(result.get("error")).get("error"))
    log.info(
        "provider batch line failed",
        extra={"custom_id": sent, "type": str(error.get("type"))[:100], "error": str(error.get("message"))[:300]},
    )
    return LineResult(sent, None, "the provider failed the line")
