"""HTTP plumbing shared by the HTTP gateways: the client with the provider's timeouts, mapping of transport
failures and status codes to UpstreamError, and server-sent-events framing."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from llmrouter.registry import ProviderSpec
from services.providers.gateways.base import UpstreamError

_MAX_ERROR_CHARS = 300
# How OpenAI-compatible servers and Anthropic word a prompt that does not fit the context window.
_CONTEXT_HINTS = ("context_length_exceeded", "maximum context length", "prompt is too long", "context window")


def make_client(spec: ProviderSpec, headers: dict[str, str]) -> httpx.AsyncClient:
    timeout = httpx.Timeout(
        connect=spec.connect_timeout_s, read=spec.read_timeout_s, write=spec.read_timeout_s, pool=spec.connect_timeout_s
    )
    # The dispatcher's semaphore is the one concurrency limit (it bounds the wait by the call's deadline and
    # reports it clearly): the pool itself must never make a call wait.
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=spec.max_concurrency)
    return httpx.AsyncClient(
        base_url=spec.base_url.rstrip("/"), headers={**spec.headers, **headers}, timeout=timeout, limits=limits
    )


def transport_error(exc: httpx.TransportError) -> UpstreamError:
    """Connection failures are worth a retry; a read that timed out is not (the upstream is slow, not down)."""
    name = type(exc).__name__
    if isinstance(exc, httpx.ConnectTimeout):
        return UpstreamError("unavailable", f"connect timeout ({name})", retryable=True)
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamError("timeout", f"upstream timed out ({name})")
    return UpstreamError("unavailable", f"connection failed ({name}: {exc})", retryable=True)


def retry_after(headers: httpx.Headers) -> float | None:
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
    except (TypeError, ValueError):
        return None


def _error_message(body: bytes) -> str:
    """The provider's own error message (both OpenAI and Anthropic nest it under error.message)."""
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = body.decode("utf-8", "replace")
    return str(message)[:_MAX_ERROR_CHARS]


def status_error(response: httpx.Response, body: bytes) -> UpstreamError:
    status, message = response.status_code, _error_message(body)
    wait = retry_after(response.headers)
    if status == 429:
        return UpstreamError(
            "rate_limited", f"rate limited (429): {message}", status=status, retryable=True, retry_after=wait
        )
    if status >= 500:  # includes Anthropic's 529 overloaded
        return UpstreamError(
            "unavailable", f"upstream error ({status}): {message}", status=status, retryable=True, retry_after=wait
        )
    if status in (400, 413) and any(hint in message.lower() for hint in _CONTEXT_HINTS):
        return UpstreamError("context_length", f"prompt too long for the model: {message}", status=status)
    return UpstreamError("rejected", f"upstream refused the request ({status}): {message}", status=status)


async def post_json(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    try:
        response = await client.post(path, json=body)
        raw = response.content
    except httpx.TransportError as exc:
        raise transport_error(exc) from None
    if response.status_code != 200:
        raise status_error(response, raw)
    return loads(raw, "response")


async def post_sse(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> AsyncIterator[tuple[str, str]]:
    """POST and yield (event, data) pairs. Leaving the iterator early closes the connection, which is how a
    cancelled call reaches the upstream."""
    try:
        async with client.stream("POST", path, json=body, headers={"accept": "text/event-stream"}) as response:
            if response.status_code != 200:
                raise status_error(response, await response.aread())
            async for event in _sse(response.aiter_lines()):
                yield event
    except httpx.TransportError as exc:
        raise transport_error(exc) from None


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
    except ValueError:
        raise UpstreamError("bad_response", f"upstream sent a malformed {what}") from None
    if not isinstance(value, dict):
        raise UpstreamError("bad_response", f"upstream sent a {what} that is not a JSON object")
    return value
