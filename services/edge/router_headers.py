"""The x-router-* headers: the routing limits a client that cannot add body fields sets, each the router request's
field of the body field's name, which it overrides. A refusal of one names the header, as sent, in its param; so does
the refusal of an x-router-* header that is none of them."""

from __future__ import annotations

import re

from starlette.datastructures import Headers

from llmrouter.v1 import router_pb2
from llmrouter.validation import DECIMAL, AmountError, parse_amount
from services.edge.openai_api import ESCALATION_MODES, INT32_MAX, ApiError

# Fractions: the router refuses one outside [0, 1] (NaN too).
FRACTIONS = {
    "x-router-quality-target": "quality_target",
    "x-router-strong-share": "strong_share",
    "x-router-quality-kept": "quality_kept",
    "x-router-verifier-threshold": "verifier_threshold",
}
FIELDS = {
    **FRACTIONS,
    "x-router-max-latency-ms": "max_latency_ms",
    "x-router-max-cost-usd": "max_cost_usd",
    "x-router-session-id": "session_id",
    "x-router-escalation": "escalation",
    "x-router-buffer-stream": "buffer_stream",
}
PREFIX = "x-router-"


def routing(headers: Headers) -> list[tuple[str, str]]:
    """The x-router-* headers sent, as sent (every copy), in FIELDS' order: what changes how a request is routed and
    charged beside its body, so a retry with an Idempotency-Key must send them again alike (replays.digest). Auth
    (the key is in the request id) and tracing headers change neither, and are not among them."""
    return [(header, value) for header in FIELDS for value in headers.getlist(header)]


def refuse_unknown(headers: Headers) -> None:
    """A 400 naming the first x-router-* header that is none of FIELDS, and listing those: ignored, a misspelt cap
    (`x-router-max-cost-usdd`) left the request uncapped while its caller believed it capped. Spelt with underscores
    too (`x_router_max_cost_usd`), which some servers and proxies read as the dashed name and this one does not."""
    for header in headers:  # lowercase, as sent
        if header.replace("_", "-").startswith(PREFIX) and header not in FIELDS:
            shown = header[:64]
            message = f"unknown header {shown}: the x-router-* headers are {', '.join(sorted(FIELDS))}"
            raise ApiError(400, message, param=shown, code="unknown_parameter")


def refuse_unapplied(headers: Headers, route: str) -> None:
    """A 400 for any x-router-* header sent to a route that reads none (`route`: uploading a batch file, creating a
    batch): ignored, a cap sent there left every request of the batch uncapped while its caller believed them capped.
    An unknown one is refused as on the routes that read them (unknown_parameter); a known one is
    unsupported_parameter, naming the body field each of the batch's requests may give instead."""
    refuse_unknown(headers)
    for header in headers:
        if header in FIELDS:
            message = (
                f"{header} does not apply to {route}: give a batch's routing limits in each request's body in the "
                f"batch file ({FIELDS[header]})"
            )
            raise ApiError(400, message, param=header, code="unsupported_parameter")


def apply(headers: Headers, message: router_pb2.CompleteRequest) -> None:
    refuse_unknown(headers)
    for header in FIELDS:
        # Which copy counts is ambiguous (Starlette takes the first, a proxy in front may check or log the last): a
        # limit the caller set could be served as another.
        if len(headers.getlist(header)) > 1:
            raise ApiError(400, f"more than one {header} header", param=header, code="duplicate_header")
    for header, field in FRACTIONS.items():
        if header in headers:
            # A number as JSON writes one: float() also takes `0.2_5` (0.25), Unicode digits and spaces.
            if not DECIMAL.fullmatch(headers[header]):
                raise ApiError(400, f"{header} must be a number", param=header, code="invalid_value")
            setattr(message, field, float(headers[header]))
    if "x-router-max-latency-ms" in headers:
        # Bounded as the body field is: past int64 the router's field could not even hold it.
        text = headers["x-router-max-latency-ms"]
        if not (text.isascii() and text.isdigit() and len(text) <= 10 and 1 <= int(text) <= INT32_MAX):
            message_text = f"x-router-max-latency-ms must be an integer from 1 to {INT32_MAX}"
            raise ApiError(400, message_text, param="x-router-max-latency-ms", code="invalid_value")
        message.max_latency_ms = int(text)
    if "x-router-max-cost-usd" in headers:
        # Read as the body's cap is. Empty, it would clear the body's cap (the router reads "" as no cap).
        try:
            cost = parse_amount(headers["x-router-max-cost-usd"])
        except AmountError as exc:
            message_text = f"x-router-max-cost-usd {exc}"
            raise ApiError(400, message_text, param="x-router-max-cost-usd", code="invalid_value") from None
        if cost < 0:
            message_text = "x-router-max-cost-usd must be a non-negative decimal number"
            raise ApiError(400, message_text, param="x-router-max-cost-usd", code="invalid_value")
        message.max_cost_usd = headers["x-router-max-cost-usd"]
    if "x-router-session-id" in headers:
        # Empty, it would clear the body's session id (the router reads "" as no session), so the conversation would
        # leave its model unsaid: refused, as every other empty x-router-* header is.
        if not headers["x-router-session-id"]:
            message_text = "x-router-session-id must not be empty (leave it out for no session)"
            raise ApiError(400, message_text, param="x-router-session-id", code="invalid_value")
        message.session_id = utf8_value(headers, "x-router-session-id")
    if "x-router-escalation" in headers:
        if headers["x-router-escalation"] not in ESCALATION_MODES:
            message_text = "x-router-escalation must be off, auto or strict"
            raise ApiError(400, message_text, param="x-router-escalation", code="invalid_value")
        message.escalation = headers["x-router-escalation"]
    if "x-router-buffer-stream" in headers:
        if headers["x-router-buffer-stream"] not in ("true", "false"):
            message_text = "x-router-buffer-stream must be true or false"
            raise ApiError(400, message_text, param="x-router-buffer-stream", code="invalid_value")
        message.buffer_stream = headers["x-router-buffer-stream"] == "true"


def utf8_value(headers: Headers, header: str) -> str:
    """The header's bytes read as UTF-8, as the body field's JSON string is: read as Starlette reads headers
    (latin-1), a session id sent as `café` was another session than the body's `café`. Not UTF-8: a 400 naming it."""
    try:
        return headers[header].encode("latin-1").decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, f"{header} must be UTF-8", param=header, code="invalid_value") from None


def named_as_sent(error: ApiError, headers: Headers) -> ApiError:
    """The router's refusal of a field a header set (a quality target past 1, a session id too long, a cap no model is
    within) naming the header, which the caller sent, not the body field, which it may not have: in its param, and
    wherever its message names the field (`over max_latency_ms 1`), a cap of each kind that a header set too (no
    model within a header's latency cap and the body's cost cap names both as sent)."""
    for header, field in FIELDS.items():
        if header not in headers:
            continue  # a header overrides its field: with one, the limit applied is the header's
        if error.param == field:
            error.param = header
        error.message = re.sub(rf"\b{field}\b", header, error.message)
    return error
