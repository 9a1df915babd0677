"""OpenAI's Batch API: the requests uploaded as a JSONL file (POST /files, multipart, purpose batch), a batch
created over it (POST /batches, 24 h window), its status read (GET /batches/{id}) and, once it has ended, its
output and error files read (GET /files/{id}/content): one line per request, keyed by custom_id."""

from __future__ import annotations

import json
import logging
from typing import Any

import aiohttp

from llmrouter.registry import ProviderSpec
from services.providers.gateways.base import UpstreamError, UpstreamRequest
from services.providers.gateways.batch_client import (
    BatchClient,
    BatchState,
    LineResult,
    NotCreated,
    creation_failed,
    json_object,
    text_field,
)
from services.providers.gateways.http import loads
from services.providers.gateways.openai import body as chat_body
from services.providers.gateways.openai import completion

log = logging.getLogger("llmrouter.providers")

ENDPOINT = "/v1/chat/completions"
WINDOW = "24h"
ENDED = frozenset({"completed", "failed", "expired", "cancelled"})
# The codes of lines the provider did not run, in its error file: said in our words.
FAILURES = {
    "batch_expired": "the provider's completion window expired before the line ran",
    "batch_cancelled": "the provider batch was cancelled before the line ran",
}


class OpenAIBatches:
    max_requests = 50_000  # OpenAI's limit per batch

    def __init__(self, spec: ProviderSpec, api_key: str) -> None:
        # No session-wide content-type: the upload is multipart, the rest JSON.
        self.client = BatchClient(spec, {"authorization": f"Bearer {api_key}"} if api_key else {})
        self.names = spec.message_names

    async def aclose(self) -> None:
        await self.client.aclose()

    def body(self, request: UpstreamRequest) -> dict[str, Any]:
        return chat_body(request, names=self.names)

    async def submit(self, lines: list[tuple[str, dict[str, Any]]]) -> str:
        """The id of a new batch of (custom_id, chat completions body) lines. NotCreated when the provider is
        known to have created none; UpstreamError when that is unknown (the creation's reply was lost)."""
        content = "".join(
            json.dumps({"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": body}) + "\n"
            for custom_id, body in lines
        ).encode()
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field("file", content, filename="batch.jsonl", content_type="application/jsonl")
        try:
            uploaded = await self.client.call("POST", "/files", data=form)
        except UpstreamError as exc:  # a file alone runs nothing
            raise NotCreated(f"batch file upload failed: {exc.message}") from None
        create = {"input_file_id": text_field(uploaded, "id"), "endpoint": ENDPOINT, "completion_window": WINDOW}
        try:
            batch = await self.client.call("POST", "/batches", json=create)
        except UpstreamError as exc:
            raise creation_failed(exc) from None
        return text_field(batch, "id")

    async def poll(self, batch_id: str, wanted: frozenset[str] = frozenset()) -> BatchState:
        """The batch's status and, once it has ended, the results of the `wanted` requests (all when empty)."""
        batch = await self.client.call("GET", f"/batches/{batch_id}")
        status = text_field(batch, "status")
        state = BatchState(status, status in ENDED)
        if state.ended:
            found: dict[str, LineResult] = {}
            for key in ("output_file_id", "error_file_id"):
                if batch.get(key):
                    path = f"/files/{text_field(batch, key)}/content"
                    await self.client.results(path, lambda custom_id: not wanted or custom_id in wanted, _line, found)
            state.results = list(found.values())
        return state


def _line(raw: str) -> LineResult:
    """One output or error file line: {id, custom_id, response: {status_code, request_id, body}, error}. A line
    that neither answers (status 200 and a chat completion) nor says why it failed is malformed."""
    entry = loads(raw, "batch result line")
    custom_id = entry.get("custom_id")
    if not isinstance(custom_id, str):
        raise UpstreamError("bad_response", "batch result line without a custom_id")
    response, error = json_object(entry.get("response")), json_object(entry.get("error"))
    status = response.get("status_code")
    if status == 200 and not error:
        return LineResult(custom_id, completion(json_object(response.get("body"))))
    if not error and not (isinstance(status, int) and status != 200):
        raise UpstreamError("bad_response", "batch result line neither answered nor failed")
    # Our own words: the provider's message may quote the operator's organisation; it is logged for them.
    code = error.get("code")
    message = FAILURES.get(code) if isinstance(code, str) else None
    if message is None:
        reason = error or json_object(json_object(response.get("body")).get("error"))
        log.info(
            "provider batch line failed",
            extra={"custom_id": custom_id, "status": status, "error": str(reason.get("message"))[:300]},
        )
        # Only a status that is one is quoted: any other JSON the file holds there is the provider's own words.
        code_said = isinstance(status, int) and not isinstance(status, bool) and status
        message = f"the provider failed the line (status {status})" if code_said else "the provider failed the line"
    return LineResult(custom_id, None, message)
