"""What the providers' Batch API gateways share: their results, the one interface batches.py speaks, and an HTTP
client for JSON calls and result files read line by line as they stream in (bounded memory, only the lines
asked for kept)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from llmrouter.registry import ProviderSpec
from services.providers.gateways.base import Completion, UpstreamError, UpstreamRequest
from services.providers.gateways.http import (
    MAX_ANSWER_BYTES,
    MAX_ERROR_BYTES,
    MAX_LINE_BYTES,
    TRANSPORT_ERRORS,
    loads,
    status_error,
    transport_error,
)

log = logging.getLogger("llmrouter.providers")

# A batch's files hold tens of thousands of answers, read as they stream (only the wanted lines are kept): this
# bounds the time a read takes, not memory.
MAX_FILE_BYTES = 64 * MAX_ANSWER_BYTES
# A read of a batch refused so is refused again, whenever tried: the provider no longer knows the batch or its file
# (404, 410), or refuses the read as invalid (400, 422). Any other failure may pass: 429, 5xx, a timeout, a connection
# error, a 401 or 403 (a key the operator can fix).
REFUSED_FOR_GOOD = frozenset({400, 404, 410, 422})


class FileTooLarge(UpstreamError):
    """A result file past MAX_FILE_BYTES: every read of it is."""


def unreadable(exc: UpstreamError) -> bool:
    """Whether a failed read of a batch fails again on every try."""
    return isinstance(exc, FileTooLarge) or exc.status in REFUSED_FOR_GOOD


class NotCreated(Exception):
    """The provider created no batch (the upload failed, or it refused the batch): nothing runs or is billed."""


@dataclass
class LineResult:
    custom_id: str
    answer: Completion | None  # None: failed, expired or cancelled, which the provider does not bill
    error: str = ""


@dataclass
class BatchState:
    status: str  # the provider's own word for it
    ended: bool
    results: list[LineResult] = field(default_factory=list)  # once ended


class ProviderBatches(Protocol):
    """A provider's Batch API, keyed by our request ids (the gateway maps them to the custom ids it sends)."""

    max_requests: int

    def body(self, request: UpstreamRequest) -> dict[str, Any]:
        """A line's request body; UpstreamError when the request cannot be sent to this provider."""
        ...

    async def submit(self, lines: list[tuple[str, dict[str, Any]]]) -> str:
        """The id of a new batch of (request id, body) lines. NotCreated when the provider is known to have created
        none; UpstreamError when that is unknown (the creation's reply was lost)."""
        ...

    async def poll(self, batch_id: str, wanted: frozenset[str] = frozenset()) -> BatchState:
        """The batch's status and, once it has ended, the results of the `wanted` requests."""
        ...

    async def aclose(self) -> None: ...


def creation_failed(exc: UpstreamError) -> Exception:
    """What a failed batch creation means: NotCreated when the provider refused it (a 4xx) or never got it,
    the error itself (the outcome unknown) when the reply was lost or the provider failed while creating."""
    refused = exc.status is not None and exc.status < 500
    never_sent = exc.kind == "unavailable" and exc.retryable and exc.status is None
    return NotCreated(f"batch refused: {exc.message}") if refused or never_sent else exc


class BatchClient:
    """JSON calls to a Batch API, and its result files streamed line by line."""

    def __init__(self, spec: ProviderSpec, headers: dict[str, str]) -> None:
        self.base_url = spec.base_url.rstrip("/")
        self.headers = {**spec.headers, **headers}
        self.timeout = aiohttp.ClientTimeout(
            total=spec.total_timeout_s, sock_connect=spec.connect_timeout_s, sock_read=spec.read_timeout_s
        )
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:  # made on first use, on the loop that uses it
            self._session = aiohttp.ClientSession(headers=self.headers, timeout=self.timeout, trust_env=True)
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            async with self.session().request(
                method, self.base_url + path, allow_redirects=False, **kwargs
            ) as response:
                body = bytearray()
                async for chunk in response.content.iter_any():
                    body += chunk
                    if len(body) > MAX_ANSWER_BYTES:
                        raise UpstreamError("bad_response", f"batch reply larger than {MAX_ANSWER_BYTES >> 20} MB")
                if response.status != 200:
                    raise status_error(response.status, response.headers, bytes(body))
        except TRANSPORT_ERRORS as exc:  # one that never carried the request is retryable, as in http.py
            raise transport_error(exc) from None
        return loads(bytes(body), "response")

    async def results(
        self,
        path: str,
        wanted: Callable[[str], bool],
        parse: Callable[[str], LineResult],
        found: dict[str, LineResult],
    ) -> None:
        """A result file read as it streams in, keeping only the lines whose custom id is `wanted`: memory holds
        those, never the file. A blank, overlong or malformed line (`parse` raised) is skipped rather than failing
        the whole file: its request is left without a result, an unknown outcome. A request both answered and
        failed (a faulty provider's duplicate) was billed: its answer wins."""
        read = 0
        try:
            async with self.session().get(self.base_url + path, allow_redirects=False) as response:
                if response.status != 200:
                    raise status_error(response.status, response.headers, await response.content.read(MAX_ERROR_BYTES))
                async for raw in _file_lines(response.content):
                    read += len(raw or b"") + 1
                    if read > MAX_FILE_BYTES:
                        raise FileTooLarge("bad_response", f"batch file larger than {MAX_FILE_BYTES >> 20} MB")
                    result = _parsed(raw, parse)
                    if result is None or not wanted(result.custom_id):
                        continue
                    known = found.get(result.custom_id)
                    if known is None or (result.answer is not None and known.answer is None):
                        found[result.custom_id] = result
        except TRANSPORT_ERRORS as exc:
            raise transport_error(exc) from None


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


def _parsed(raw: bytes | None, parse: Callable[[str], LineResult]) -> LineResult | None:
    if raw is None:
        log.warning("batch result line skipped", extra={"error": f"longer than {MAX_LINE_BYTES >> 20} MB"})
        return None
    text = raw.removesuffix(b"\r").decode("utf-8", "replace")
    if not text.strip():
        return None
    try:
        return parse(text)
    except UpstreamError as exc:
        log.warning("batch result line skipped", extra={"error": exc.message, "line": text[:200]})
        return None


def json_object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def text_field(value: dict[str, Any], key: str) -> str:
    found = value.get(key)
    if not isinstance(found, str) or not found:
        raise UpstreamError("bad_response", f"upstream batch reply without {key}")
    return found
