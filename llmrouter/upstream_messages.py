"""What a caller is told of a provider's failure: a fixed message per kind of failure and class of upstream status. A
provider's own error text can quote the operator's organisation or account, a key's prefix, an internal host or a
file path, and a transport error names the address it failed to reach: neither ever reaches a caller. The service
where the failure happened logs it, with the request id."""

from __future__ import annotations

from collections.abc import Mapping

# Reasons of a provider's failure (llmrouter/errors.py, docs/conventions.md): their messages are these fixed ones.
UPSTREAM_REASONS = frozenset(
    {
        "UPSTREAM_ERROR",
        "UPSTREAM_TIMEOUT",
        "UPSTREAM_UNAVAILABLE",
        "UPSTREAM_RATE_LIMITED",
        "UPSTREAM_CONNECTION_LOST",
        "CONTEXT_LENGTH_EXCEEDED",
        "STREAM_INTERRUPTED",
        "CIRCUIT_OPEN",
    }
)

# By reason, when the upstream gave no HTTP status (or the reason says more than the status).
_BY_REASON = {
    "UPSTREAM_ERROR": "the provider sent a malformed answer",
    "UPSTREAM_TIMEOUT": "the provider did not answer in time",
    "UPSTREAM_UNAVAILABLE": "the provider could not be reached",
    "UPSTREAM_RATE_LIMITED": "the provider is rate limiting requests",
    "UPSTREAM_CONNECTION_LOST": "the connection to the provider was lost after the request was sent",
    "CONTEXT_LENGTH_EXCEEDED": "the prompt is longer than the model's context window",
    "STREAM_INTERRUPTED": "the provider's stream broke off after it began answering",
    "CIRCUIT_OPEN": "the provider failed repeatedly: calls to this model are paused for a while",
}
_STATUS_OWN = {
    429: "is rate limiting requests",
    503: "is overloaded",
    529: "is overloaded",  # Anthropic's "overloaded_error"
    400: "refused the request as invalid",
    422: "refused the request as invalid",
    401: "refused this service's credentials",
    403: "refused this service's credentials",
    404: "does not serve the model asked for",
    413: "refused the request as too large",
}
# Reasons whose own words say more than any status: the status is added to them.
_REASON_FIRST = {"CONTEXT_LENGTH_EXCEEDED", "STREAM_INTERRUPTED", "CIRCUIT_OPEN", "UPSTREAM_TIMEOUT"}


def _status_phrase(status: int) -> str:
    if status in _STATUS_OWN:
        return f"the provider {_STATUS_OWN[status]}"
    if 300 <= status < 400:
        return "the provider redirected the request, which is not followed"
    if status >= 500:
        return "the provider failed with a server error"
    return "the provider refused the request"


def upstream_message(reason: str, metadata: Mapping[str, str]) -> str:
    """The caller's message for a provider failure of `reason`, from its ErrorInfo metadata alone (provider, model,
    upstream_status): '<provider>/<model>: <what happened> (HTTP <status>)'."""
    text = _BY_REASON.get(reason, "the provider failed the request")
    status = metadata.get("upstream_status", "")
    if status.isdigit() and len(status) == 3:
        if reason not in _REASON_FIRST:
            text = _status_phrase(int(status))
        text += f" (HTTP {status})"
    provider, model = metadata.get("provider", ""), metadata.get("model", "")
    named = "/".join(part for part in (provider, model) if part)
    return f"{named}: {text}" if named else text
