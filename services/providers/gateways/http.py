"""HTTP plumbing shared by the HTTP gateways: the client with the provider's timeouts, mapping of transport
failures and status codes to UpstreamError, and server-sent-events framing. The client is aiohttp's: its C
HTTP parser costs a fraction of httpx's pure-Python stack, which was half of this service's CPU per call
(benchmarks/README.md)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Mapping
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp

from llmrouter.registry import ProviderSpec
from services.providers.gateways.base import UpstreamError

_MAX_ERROR_CHARS = 300
# What an upstream may send before it is a bad response rather than memory this service gives away: an answer
# (16k tokens with log-probabilities is a few MB), one stream line, an error body (only its message is kept).
MAX_ANSWER_BYTES = 32 << 20
MAX_LINE_BYTES = 8 << 20
# A whole stream: its events wrap each token in a few hundred bytes of JSON (OpenAI's ~250: the longest answers,
# 128k tokens, take about an answer's bound), so four times that. Unbounded, a stream that kept sending for the
# whole total timeout had all of it held in memory (the text delivered, the tool calls' arguments).
MAX_STREAM_BYTES = 4 * MAX_ANSWER_BYTES
MAX_ERROR_BYTES = 64 << 10
# How OpenAI-compatible servers and Anthropic word a prompt that does not fit the context window.
_CONTEXT_HINTS = ("context_length_exceeded", "maximum context length", "prompt is too long", "context window")


class HttpClient:
    """One provider's connection pool, with its timeouts and headers. The aiohttp session is made on first use:
    it belongs to the event loop that uses it, which may not run yet when the gateway is built."""

    def __init__(self, spec: ProviderSpec, headers: dict[str, str]) -> None:
        self.base_url = spec.base_url.rstrip("/")
        self.headers = {**spec.headers, **headers, "content-type": "application/json"}
        # Per socket operation, as before: connecting, and each read (a stream may run long while it flows).
        self.timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=spec.connect_timeout_s, sock_read=spec.read_timeout_s
        )
        self._session: aiohttp.ClientSession | None = None

    def post(self, path: str, body: dict[str, Any], headers: Mapping[str, str] | None = None) -> Any:
        if self._session is None:
            # The dispatcher's semaphore is the one concurrency limit (it bounds the wait by the call's deadline
            # and reports it clearly): the pool itself never makes a call wait (limit=0). trust_env: the
            # HTTP(S)_PROXY settings apply, as they did.
            connector = aiohttp.TCPConnector(limit=0)
            self._session = aiohttp.ClientSession(
                headers=self.headers, timeout=self.timeout, connector=connector, trust_env=True
            )
        # Never follow a redirect: it would carry the prompt, and the key headers aiohttp keeps across hosts
        # (x-api-key), to wherever the upstream points, internal addresses included.
        return self._session.post(
            self.base_url + path, data=json.dumps(body).encode(), headers=headers, allow_redirects=False
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def make_client(spec: ProviderSpec, headers: dict[str, str]) -> HttpClient:
    return HttpClient(spec, headers)


# What the transport raises: aiohttp's errors, and TimeoutError for a socket operation over its timeout.
TRANSPORT_ERRORS = (aiohttp.ClientError, TimeoutError)
# Failures before the request left this service: connecting (refused, DNS, TLS, proxy), its timeout, a URL aiohttp
# will not send to. The upstream never saw the request, so it generated and bills nothing: free to retry. Every
# other transport failure (the server disconnected or reset the connection, sent no valid status line, cut the
# body) comes after the request was written: the upstream may have generated an answer and bill it.
NEVER_SENT = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError, aiohttp.InvalidURL)


def transport_error(exc: BaseException) -> UpstreamError:
    """A connection that never carried the request is worth a retry; a read that timed out is not (the upstream
    is slow, not down), nor a connection lost once the request was sent (an unknown outcome, not a free retry)."""
    name = type(exc).__name__
    if isinstance(exc, NEVER_SENT):
        return UpstreamError("unavailable", f"connection failed before sending ({name}: {exc})", retryable=True)
    if isinstance(exc, TimeoutError):
        return UpstreamError("timeout", f"upstream timed out ({name})")
    return UpstreamError("lost", f"connection lost after the request was sent ({name}: {exc})")


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from `retry-after-ms` (OpenAI) or `retry-after` (seconds or an HTTP date)."""
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):  # OverflowError: a day or second past a C long
        return None


def _error_message(body: bytes) -> str:
    """The provider's own error message (both OpenAI and Anthropic nest it under error.message)."""
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError, RecursionError):  # RecursionError: JSON nested past the parser's depth
        message = body.decode("utf-8", "replace")
    return str(message)[:_MAX_ERROR_CHARS]


def status_error(status: int, headers: Mapping[str, str], body: bytes) -> UpstreamError:
    message = _error_message(body)
    wait = retry_after(headers)
    if status == 429:
        return UpstreamError(
            "rate_limited", f"rate limited (429): {message}", status=status, retryable=True, retry_after=wait
        )
    if 300 <= status < 400:  # not followed (HttpClient.post): nothing generated, and the next model may answer
        return UpstreamError("unavailable", f"upstream redirected the request ({status}), not followed", status=status)
    if status >= 500:  # includes Anthropic's 529 overloaded
        return UpstreamError(
            "unavailable", f"upstream error ({status}): {message}", status=status, retryable=True, retry_after=wait
        )
    if status in (400, 413) and any(hint in message.lower() for hint in _CONTEXT_HINTS):
        return UpstreamError("context_length", f"prompt too long for the model: {message}", status=status)
    return UpstreamError("rejected", f"upstream refused the request ({status}): {message}", status=status)


async def post_json(client: HttpClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    try:
        async with client.post(path, body) as response:
            if response.status != 200:
                raise status_error(response.status, response.headers, await _error_body(response))
            raw = await _read(response.content, MAX_ANSWER_BYTES)
            headers = response.headers
    except TRANSPORT_ERRORS as exc:
        # An answer cut short is lost too: the upstream generated what it bills, which never arrived whole.
        raise transport_error(exc) from None
    payload = loads(raw, "response")
    if "error" in payload and not ("choices" in payload or "content" in payload):  # OpenAI's answer, Anthropic's
        raise answered_error(payload["error"], headers, raw, consumed=_reports_tokens(payload.get("usage")))
    return payload


# An error object's code or type (OpenAI's, Anthropic's; OpenRouter's code is the status itself) as the HTTP status
# the upstream would have sent it with.
_ERROR_STATUSES = {
    "invalid_request_error": 400,
    "context_length_exceeded": 400,
    "authentication_error": 401,
    "invalid_api_key": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "model_not_found": 404,
    "request_too_large": 413,
    "rate_limit_exceeded": 429,
    "rate_limit_error": 429,
    "server_error": 500,
    "api_error": 500,
    "overloaded_error": 529,
}
# Of those, the refusals made before a model runs (the request's own fault, our key, a rate limit), which no upstream
# bills whatever it answered with. Not 402 or 408 (OpenRouter's credits running out, its timeout), which it may say
# once the model is generating, nor a server's failure.
_REFUSED_BEFORE_RUNNING = frozenset({400, 401, 403, 404, 413, 422, 429})


def error_status(error: Any) -> int | None:
    """The HTTP status an upstream's error object stands for, None when it names none this service knows."""
    if not isinstance(error, dict):
        return None
    code = error.get("code")
    if isinstance(code, str) and code.isdigit() and len(code) == 3:
        code = int(code)
    if isinstance(code, int) and not isinstance(code, bool) and 400 <= code < 600:
        return code
    for name in (code, error.get("type")):
        if isinstance(name, str) and name in _ERROR_STATUSES:
            return _ERROR_STATUSES[name]
    return None


def answered_error(error: Any, headers: Mapping[str, str], raw: bytes, consumed: bool = False) -> UpstreamError:
    """A 200 whose body is an error object, no answer. A refusal made before a model runs is taken as its status
    would be (a rate limit retried, a bad request refused). Any other (a server's failure, or no status named), or
    one whose body reports tokens consumed (no refusal before running, whatever it names), stays an answer lost:
    OpenRouter documents its 200 with an error body as a failure while the model generated, what it bills for it
    unknown, so it is owed at its worst case and never retried."""
    status = None if consumed else error_status(error)
    if status in _REFUSED_BEFORE_RUNNING:
        return status_error(status, headers, raw)
    return UpstreamError("bad_response", f"upstream answered 200 with an error: {_error_message(raw)}")


def _reports_tokens(usage: Any) -> bool:
    """Whether a usage object (OpenAI's or Anthropic's fields) counts any token consumed."""
    if not isinstance(usage, dict):
        return False
    return any(isinstance(n, int | float) and not isinstance(n, bool) and n > 0 for n in usage.values())


def event_error(error: Any, started: bool) -> UpstreamError:
    """An error a stream sent as an event. Before any other event (nothing generated, the stream's order says), a
    refusal made before a model runs is taken as its status would be; any other, or one after the upstream began
    answering, is a failure retried, what the attempt consumed charged."""
    status = None if started else error_status(error)
    if status in _REFUSED_BEFORE_RUNNING:
        said = error.get("message") if isinstance(error, dict) else None  # the one field status_error reads
        return status_error(
            status, {}, json.dumps({"error": {"message": said if isinstance(said, str) else ""}}).encode()
        )
    kind = error.get("type") if isinstance(error, dict) else None
    kind = kind[:_MAX_ERROR_CHARS] if isinstance(kind, str) else "unknown"
    return UpstreamError("unavailable", f"upstream error mid-stream: {kind}", retryable=True)


async def post_sse(client: HttpClient, path: str, body: dict[str, Any]) -> AsyncIterator[tuple[str, str]]:
    """POST and yield (event, data) pairs. Leaving the iterator early closes the connection, which is how a
    cancelled call reaches the upstream. Once the upstream accepted the stream (200), a stream that ends or is
    cut before its first event is lost: the upstream may be generating, and nothing says what. Cut after an
    event, it is retryable: the gateway reports what the events said was consumed, which is charged."""
    started = False
    try:
        async with client.post(path, body, {"accept": "text/event-stream"}) as response:
            if response.status != 200:
                raise status_error(response.status, response.headers, await _error_body(response))
            async for event in _sse(_lines(response.content)):
                started = True
                yield event
            if not started:
                raise UpstreamError("lost", "the upstream accepted the stream, then ended it before its first event")
    except TRANSPORT_ERRORS as exc:
        if not started:
            raise transport_error(exc) from None
        if isinstance(exc, TimeoutError):  # no event within the read timeout: slow, and no longer reporting
            raise UpstreamError("timeout", f"upstream timed out mid-stream ({type(exc).__name__})") from None
        raise UpstreamError("unavailable", f"stream cut ({type(exc).__name__}: {exc})", retryable=True) from None


async def _error_body(response: aiohttp.ClientResponse) -> bytes:
    """The beginning of an error answer's body; nothing when it cannot be read (the status says enough)."""
    try:
        return await _read(response.content, MAX_ERROR_BYTES, truncate=True)
    except TRANSPORT_ERRORS:
        return b""


async def _read(content: aiohttp.StreamReader, limit: int, truncate: bool = False) -> bytes:
    """The body; over `limit`, its beginning when `truncate` (an error body), else a bad response (an answer
    the upstream generated: owed at its worst case, not retried)."""
    body = bytearray()
    async for chunk in content.iter_any():
        body += chunk
        if len(body) > limit:
            if truncate:
                return bytes(body[:limit])
            raise UpstreamError("bad_response", f"answer larger than {limit >> 20} MB")
    return bytes(body)


async def _lines(content: aiohttp.StreamReader) -> AsyncIterator[str]:
    """Lines as they arrive, up to MAX_LINE_BYTES each and MAX_STREAM_BYTES in all, without their line ending (LF
    or CRLF)."""
    buffer = bytearray()
    read = 0
    async for chunk in content.iter_any():
        read += len(chunk)
        if read > MAX_STREAM_BYTES:
            raise UpstreamError("bad_response", f"stream larger than {MAX_STREAM_BYTES >> 20} MB")
        searched = len(buffer)  # no newline before this: search only what arrived
        buffer += chunk
        end = buffer.rfind(b"\n", searched)
        if end < 0:
            if len(buffer) > MAX_LINE_BYTES:
                raise UpstreamError("bad_response", f"stream line longer than {MAX_LINE_BYTES >> 20} MB")
            continue
        for line in bytes(buffer[:end]).split(b"\n"):
            yield _text(line)
        del buffer[: end + 1]
    if buffer:
        yield _text(bytes(buffer))


def _text(line: bytes) -> str:
    return line.removesuffix(b"\r").decode("utf-8", "replace")


async def _sse(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, str]]:
    event, data = "", list[str]()
    async for line in lines:
        if not line:
            if data:
                yield event or "message", "\n".join(data)
            event, data = "", list[str]()
        elif not line.startswith(":"):  # ":" starts a comment (keep-alive)
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)
    # An event not ended by a blank line was cut off: the SSE spec says to drop it.


def loads(data: str | bytes, what: str = "stream event") -> dict[str, Any]:
    """Parse an upstream JSON object (a response body or one stream event), or fail as a bad response."""
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: nested past the parser's depth, a few KB of "["
        raise UpstreamError("bad_response", f"upstream sent a malformed {what}") from None
    if not isinstance(value, dict):
        raise UpstreamError("bad_response", f"upstream sent a {what} that is not a JSON object")
    return value
