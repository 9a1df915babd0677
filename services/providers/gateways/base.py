"""What every gateway takes and returns, and the one error type it raises."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol


@dataclass
class Message:
    role: str
    content: str
    name: str = ""
    tool_call_id: str = ""  # on a tool message: the call it answers
    # On an assistant message: its tool calls in OpenAI's shape, {"id", "type", "function": {"name", "arguments"}}.
    tool_calls: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class UpstreamRequest:
    model: str  # the provider's own model name
    messages: Sequence[Message]
    max_tokens: int | None = None
    temperature: float | None = None
    # OpenAI-style extras (tools, response_format, ...) passed through untouched.
    passthrough: dict[str, Any] = field(default_factory=dict)
    request_id: str = ""  # for logs only
    want_logprobs: bool = False  # token log-probabilities for a confidence signal, where the upstream has them


@dataclass
class Completion:
    """A whole generation, or the end of a stream (content then holds nothing). Token counts are None when
    the provider did not report them."""

    content: str = ""
    finish_reason: str = ""
    input_tokens: int | None = None
    output_tokens: int | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # OpenAI's shape, arguments a JSON string
    mean_logprob: float | None = None  # over the answer's tokens, when asked for and given
    logprobs: dict[str, Any] | None = None  # OpenAI's choices[0].logprobs, as given (a stream's joined)
    tool_text: str = ""  # a stream's event only: the tool-call text it brought (a name, a piece of arguments)
    # Of input_tokens (0 while it is None), those read from and written to the provider's prompt cache.
    cached_input_tokens: int = 0
    cache_write_input_tokens: int = 0
    # The model's refusal (OpenAI's message.refusal), beside content, which is then usually empty; a stream's end
    # holds nothing here either, its pieces came as Refusal events.
    refusal: str = ""


class Reported(NamedTuple):
    """A provider's usage report, as a gateway reads it: a count it did not give (or gave as no count) is None, the
    cache counts 0 then (all of the input is charged at the input price) and never more than input_tokens."""

    input_tokens: int | None
    output_tokens: int | None
    cached_input_tokens: int = 0
    cache_write_input_tokens: int = 0

    def completion(self) -> Completion:
        """A Completion carrying these counts."""
        return Completion(
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cached_input_tokens=self.cached_input_tokens,
            cache_write_input_tokens=self.cache_write_input_tokens,
        )


@dataclass(frozen=True)
class Refusal:
    """A stream's event: a piece of the model's refusal (OpenAI's delta.refusal), as a str event is a piece of its
    content."""

    text: str


# A stream yields text deltas, refusal pieces, and Completions carrying usage, finish reason and the tool calls: each
# call as soon as it starts, its arguments growing in place as they stream in, so that a stream cut at any moment (the
# call's deadline included, which no gateway sees coming) is charged the arguments generated so far; and an event for
# each piece (tool_text), so that a caller leaving such a stream is told of them too.
StreamEvent = str | Refusal | Completion

# "lost": the connection failed after the request was sent (or a stream the upstream accepted ended before its first
# event): the upstream may have generated, and bill, anything up to the call's worst case.
ErrorKind = Literal["timeout", "rate_limited", "unavailable", "bad_response", "rejected", "context_length", "lost"]


class UpstreamError(Exception):
    """A failed upstream call. `retryable` covers failures whose cost is known: 429, 5xx and a connection that
    never carried the request (nothing), a stream cut after its first event (what `consumed` says); `retry_after` is the
    provider's Retry-After in seconds when it sent one. `consumed` is set on a stream that failed after the
    upstream began answering: what it had reported and generated (tool calls so far) but not yet delivered,
    which the provider bills all the same."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after
        self.consumed: Completion | None = None


class Gateway(Protocol):
    async def complete(self, request: UpstreamRequest) -> Completion: ...

    def stream(self, request: UpstreamRequest) -> AsyncGenerator[StreamEvent, None]: ...

    async def aclose(self) -> None: ...


# A token count beyond this is no count (2^53: exact as a JSON number anywhere, and well inside int64).
MAX_TOKEN_COUNT = 2**53
# finish_reason as OpenAI's API has it: the values an SDK caller (and escalation, on "length") knows.
OPENAI_FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})
# Other providers' names for them: Together's "eos", Mistral's "model_length", Anthropic's stop reasons.
FINISH_ALIASES = {
    "eos": "stop",
    "end_turn": "stop",
    "stop_sequence": "stop",
    "model_length": "length",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def openai_finish_reason(reason: str) -> str:
    """One of OpenAI's finish reasons for a provider's own; one unknown (or none) is a natural end."""
    if reason in OPENAI_FINISH_REASONS:
        return reason
    return FINISH_ALIASES.get(reason, "stop")


def token_count(value: Any) -> int | None:
    """A provider's token count, or None when it is not a whole number of tokens (negative, a bool, absurdly
    large): taken as reported, it would credit the tenant or charge an unbounded amount; None is counted locally."""
    is_count = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < MAX_TOKEN_COUNT
    return value if is_count else None


# An upstream's JSON read field by field: a field of the wrong type is a malformed answer (bad_response: generated,
# perhaps, so owed at its worst case), never an exception the service does not expect, which would leave a
# half-open circuit's probe taken for good and give the caller a bare internal error.
def json_obj(value: Any, what: str) -> dict[str, Any]:
    """An object, or {} when absent (null)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UpstreamError("bad_response", f"upstream sent a {what} that is not a JSON object")
    return value


def json_list(value: Any, what: str) -> list[Any]:
    """A list, or [] when absent (null)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise UpstreamError("bad_response", f"upstream sent a {what} that is not a JSON list")
    return value


def json_text(value: Any, what: str) -> str:
    """A string, or "" when absent (null)."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise UpstreamError("bad_response", f"upstream sent a {what} that is not a string")
    return value
