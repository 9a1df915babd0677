"""OpenAI's Batch API: the requests uploaded as a JSONL file (POST /files, multipart, purpose batch), a batch
created over it (POST /batches, 24 h window), its status read (GET /batches/{id}) and, once it has ended, its
output and error files read (GET /files/{id}/content): one line per request, keyed by custom_id."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from llmrouter.registry import ProviderSpec
from services.providers.gateways.base import Completion, UpstreamError
from services.providers.gateways.http import (
    MAX_ANSWER_BYTES,
    TRANSPORT_ERRORS,
    loads,
    status_error,
    transport_error,
)
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
# A batch's files hold up to 50,000 answers: far more than one answer may weigh.
MAX_FILE_BYTES = 64 * MAX_ANSWER_BYTES


class NotCreated(Exception):
    """The provider created no batch (the upload failed, or it refused the batch): nothing runs or is billed."""


@dataclass
class LineResult:
    custom_id: str
    answer: Completion | None  # None: failed, expired or cancelled, which the provider does not bill
    error: str = ""


@dataclass
class BatchState:
    status: str
    results: list[LineResult] = field(default_factory=list)  # once ended

    @property
    def ended(self) -> bool:
        return self.status in ENDED


class OpenAIBatches:
    def __init__(self, spec: ProviderSpec, api_key: str) -> None:
        self.base_url = spec.base_url.rstrip("/")
        # No session-wide content-type: the upload is multipart, the rest JSON.
        self.headers = {**spec.headers, **({"authorization": f"Bearer {api_key}"} if api_key else {})}
        self.timeout = aiohttp.ClientTimeout(
            total=spec.total_timeout_s, sock_connect=spec.connect_timeout_s, sock_read=spec.read_timeout_s
        )
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:  # made on first use, on the loop that uses it
            self._session = aiohttp.ClientSession(headers=self.headers, timeout=self.timeout, trust_env=True)
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

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
            uploaded = await self._call("POST", "/files", data=form)
        except UpstreamError as exc:  # a file alone runs nothing
            raise NotCreated(f"batch file upload failed: {exc.message}") from None
        create = {"input_file_id": _text(uploaded, "id"), "endpoint": ENDPOINT, "completion_window": WINDOW}
        try:
            batch = await self._call("POST", "/batches", json=create)
        except UpstreamError as exc:
            refused = exc.status is not None and exc.status < 500
            never_sent = exc.kind == "unavailable" and exc.retryable and exc.status is None
            if refused or never_sent:
                raise NotCreated(f"batch refused: {exc.message}") from None
            raise
        return _text(batch, "id")

    async def poll(self, batch_id: str) -> BatchState:
        batch = await self._call("GET", f"/batches/{batch_id}")
        state = BatchState(_text(batch, "status"))
        if state.ended:
            for key in ("output_file_id", "error_file_id"):
                if batch.get(key):
                    raw = await self._read("GET", f"/files/{_text(batch, key)}/content")
                    state.results += _lines(raw.decode("utf-8", "replace").splitlines())
        return state

    async def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        return loads(await self._read(method, path, **kwargs), "response")

    async def _read(self, method: str, path: str, **kwargs: Any) -> bytes:
        try:
            async with self._client().request(method, self.base_url + path, **kwargs) as response:
                body = bytearray()
                async for chunk in response.content.iter_any():
                    body += chunk
                    if len(body) > MAX_FILE_BYTES:
                        raise UpstreamError("bad_response", f"batch reply larger than {MAX_FILE_BYTES >> 20} MB")
                if response.status != 200:
                    raise status_error(response.status, response.headers, bytes(body))
        except TRANSPORT_ERRORS as exc:  # one that never carried the request is retryable, as in http.py
            raise transport_error(exc) from None
        return bytes(body)


def _lines(raw_lines: list[str]) -> list[LineResult]:
    """The file's results. A malformed line is skipped, not the whole file: its request (if any) is left without
    a result, an unknown outcome, and the others are settled from theirs."""
    results = []
    for raw in raw_lines:
        if not raw.strip():
            continue
        try:
            results.append(_line(raw))
        except UpstreamError as exc:
            log.warning("malformed batch result line skipped", extra={"error": exc.message, "line": raw[:200]})
    return results


def _line(raw: str) -> LineResult:
    """One output or error file line: {id, custom_id, response: {status_code, request_id, body}, error}. A line
    that neither answers (status 200 and a chat completion) nor says why it failed is malformed."""
    entry = loads(raw, "batch result line")
    custom_id = entry.get("custom_id")
    if not isinstance(custom_id, str):
        raise UpstreamError("bad_response", "batch result line without a custom_id")
    response, error = _object(entry.get("response")), _object(entry.get("error"))
    status = response.get("status_code")
    if status == 200 and not error:
        return LineResult(custom_id, completion(_object(response.get("body"))))
    if not error and not (isinstance(status, int) and status != 200):
        raise UpstreamError("bad_response", "batch result line neither answered nor failed")
    # Our own words: the provider's message may quote the operator's organisation; it is logged for them.
    code = error.get("code")
    message = FAILURES.get(code) if isinstance(code, str) else None
    if message is None:
        reason = error or _object(_object(response.get("body")).get("error"))
        log.info(
            "provider batch line failed",
            extra={"custom_id": custom_id, "status": status, "error": str(reason.get("message"))[:300]},
        )
        message = f"the provider failed the line (status {status})" if status else "the provider failed the line"
    return LineResult(custom_id, None, message)


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: dict[str, Any], key: str) -> str:
    found = value.get(key)
    if not isinstance(found, str) or not found:
        raise UpstreamError("bad_response", f"upstream batch reply without {key}")
    return found
