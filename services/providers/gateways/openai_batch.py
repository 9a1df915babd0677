"""OpenAI's Batch API: the requests uploaded as a JSONL file (POST /files, multipart, purpose batch), a batch
created over it (POST /batches, 24 h window), its status read (GET /batches/{id}) and, once it has ended, its
output and error files read (GET /files/{id}/content): one line per request, keyed by custom_id."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from llmrouter.registry import ProviderSpec
from services.providers.gateways.base import Completion, UpstreamError
from services.providers.gateways.http import (
    MAX_ANSWER_BYTES,
    MAX_ERROR_BYTES,
    MAX_LINE_BYTES,
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
# A batch's files hold up to 50,000 answers, read as they stream (only the wanted lines are kept): this bounds the
# time a read takes, not memory.
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

    async def poll(self, batch_id: str, wanted: frozenset[str] = frozenset()) -> BatchState:
        """The batch's status and, once it has ended, the results of the `wanted` requests (all when empty)."""
        batch = await self._call("GET", f"/batches/{batch_id}")
        state = BatchState(_text(batch, "status"))
        if state.ended:
            found: dict[str, LineResult] = {}
            for key in ("output_file_id", "error_file_id"):
                if batch.get(key):
                    await self._results(_text(batch, key), wanted, found)
            state.results = list(found.values())
        return state

    async def _results(self, file_id: str, wanted: frozenset[str], found: dict[str, LineResult]) -> None:
        """A result file read as it streams in, keeping only the wanted lines: memory holds those, never the
        file. A request both answered and failed (a faulty provider's duplicate) was billed: its answer wins."""
        read = 0
        try:
            async with self._client().get(f"{self.base_url}/files/{file_id}/content") as response:
                if response.status != 200:
                    raise status_error(response.status, response.headers, await response.content.read(MAX_ERROR_BYTES))
                async for raw in _file_lines(response.content):
                    read += len(raw or b"") + 1
                    if read > MAX_FILE_BYTES:
                        raise UpstreamError("bad_response", f"batch file larger than {MAX_FILE_BYTES >> 20} MB")
                    result = _parsed(raw)
                    if result is None or (wanted and result.custom_id not in wanted):
                        continue
                    known = found.get(result.custom_id)
                    if known is None or (result.answer is not None and known.answer is None):
                        found[result.custom_id] = result
        except TRANSPORT_ERRORS as exc:
            raise transport_error(exc) from None

    async def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        return loads(await self._read(method, path, **kwargs), "response")

    async def _read(self, method: str, path: str, **kwargs: Any) -> bytes:
        try:
            async with self._client().request(method, self.base_url + path, **kwargs) as response:
                body = bytearray()
                async for chunk in response.content.iter_any():
                    body += chunk
                    if len(body) > MAX_ANSWER_BYTES:
                        raise UpstreamError("bad_response", f"batch reply larger than {MAX_ANSWER_BYTES >> 20} MB")
                if response.status != 200:
                    raise status_error(response.status, response.headers, bytes(body))
        except TRANSPORT_ERRORS as exc:  # one that never carried the request is retryable, as in http.py
            raise transport_error(exc) from None
        return bytes(body)


async def _file_lines(content: aiohttp.StreamReader) -> AsyncIterator[bytes | None]:
    """A file's lines as they arrive; None for one over MAX_LINE_BYTES, dropped as it streams past."""
    buffer, skipping = bytearray(), False
    async for chunk in content.iter_any():
        searched, start = len(buffer), 0  # no newline before `searched`: search only what arrived
        buffer += chunk
        while (end := buffer.find(b"\n", max(searched, start))) >= 0:
            yield None if skipping else bytes(buffer[start:end])
            skipping, start = False, end + 1
        del buffer[:start]
        if len(buffer) > MAX_LINE_BYTES:
            buffer.clear()
            skipping = True
    if buffer or skipping:
        yield None if skipping else bytes(buffer)


def _parsed(raw: bytes | None) -> LineResult | None:
    """A file line's result; None for a blank or malformed one, skipped rather than failing the whole file: its
    request (if any) is left without a result, an unknown outcome, and the others are settled from theirs."""
    if raw is None:
        log.warning("batch result line skipped", extra={"error": f"longer than {MAX_LINE_BYTES >> 20} MB"})
        return None
    text = raw.removesuffix(b"\r").decode("utf-8", "replace")
    if not text.strip():
        return None
    try:
        return _line(text)
    except UpstreamError as exc:
        log.warning("batch result line skipped", extra={"error": exc.message, "line": text[:200]})
        return None


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
