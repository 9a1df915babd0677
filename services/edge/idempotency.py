"""The Idempotency-Key header: a caller's retry made safe. The router serves and charges a request id once per tenant
(a second request with it is refused as a duplicate, told what the first was charged); the edge names each request
by a fresh id, so a retry (the openai SDK's own, after a client-side timeout) was a new request, charged again. With
the header, the request's id is derived from it, so every retry carrying it is the same request to the router. A
first that failed charged nothing, delivering nothing, leaves the id free for its retry (the router releases it); a
finished one's retry gets its kept answer (a chat stream's, its events) again from the edge (replays.py).

The id is a hash of (tenant, API key, header value): two keys sending the same value are two requests, and no key can
name, probe or take another key's id, nor one of the edge's own (uuid4 hex, which has no '-')."""

from __future__ import annotations

import hashlib
import json
import re

from starlette.datastructures import Headers

from services.edge.openai_api import ApiError

HEADER = "idempotency-key"
SHOWN = "Idempotency-Key"
MAX_LENGTH = 255  # as Stripe's
# Visible ASCII: what a uuid, a ULID or a caller's own token is written in; no spaces or control characters.
ALLOWED = re.compile(rf"[!-~]{{1,{MAX_LENGTH}}}")
PREFIX = "idem-"
RULE = f"{SHOWN} is 1-{MAX_LENGTH} visible ASCII characters (no spaces or control characters)"


def sent_key(headers: Headers) -> str | None:
    """The caller's Idempotency-Key, or None for none; a 400 for one given twice (which counts is ambiguous) or one
    outside the rule (its value is never echoed: it may be huge or hold control characters)."""
    sent = headers.getlist(HEADER)
    if not sent:
        return None
    if len(sent) > 1:
        raise ApiError(400, f"more than one {SHOWN} header", param=SHOWN, code="invalid_idempotency_key")
    if not ALLOWED.fullmatch(sent[0]):
        raise ApiError(400, f"invalid {SHOWN}: {RULE}", param=SHOWN, code="invalid_idempotency_key")
    return sent[0]


def request_id(tenant: str, api_key: str, key: str) -> str:
    """The router request id of a request sent with Idempotency-Key `key` by `api_key` of `tenant`: 192 bits of a
    hash of all three (the API key by its digest; JSON keeps the parts apart whatever they hold)."""
    key_digest = hashlib.sha256(api_key.encode()).hexdigest()
    material = json.dumps(["idempotency-key", tenant, key_digest, key]).encode()
    return PREFIX + hashlib.sha256(material).hexdigest()[:48]


def reused(error: ApiError) -> ApiError:
    """The router's duplicate refusal of a request sent with an Idempotency-Key, told as the key's reuse: the request
    was not served or charged again. What the first was charged (or holds while it runs) is kept, as the router told
    it; the request id names the first in the ledger and the logs. Only one still in flight may be retried (the SDKs
    do so on their own): its admission may yet be undone, or its request fail charged nothing, freeing the value, or
    end answered, its answer then sent again (replays.py)."""
    if error.code != "duplicate_request":  # the router's DUPLICATE_REQUEST (app.OPENAI_CODES has no other name)
        return error
    # In flight first: an id with a charge on record and a request of it in flight is one retried after a release
    # (charged 0 before) or one a store that lost its admission let in again; that request is what is under way.
    if error.held_usd:
        told = f"it is still in flight, holding {error.held_usd} USD until it is charged"
        if error.charged_usd.strip("0."):  # some, not 0
            told += f" (its request id was charged {error.charged_usd} USD before)"
    elif error.charged_usd:
        told = f"it was charged {error.charged_usd} USD"
    else:
        told = "its charge, if any, is in the ledger under its request id"
    error.message = (
        f"this {SHOWN} was used before by this API key (request id {error.request_id}): the request was not served "
        f"or charged again; {told}. Send a new {SHOWN} for a new request"
    )
    error.code, error.param = "idempotency_key_reused", SHOWN
    if not error.held_usd:  # the first ended and used the id (a release frees it first): no retry is ever served
        error.retryable = False
    return error


def still_being_kept(error: ApiError, waited_s: float) -> ApiError:
    """The key's reuse (`reused`) by a retry of a request that ended on another edge, its answer still being kept
    there after waited_s: it may be there for the next retry, which the SDKs then send (`retryable`)."""
    error.message += (
        f". Its answer was still being kept by the edge that served it after {waited_s:g} s: retry with this {SHOWN} "
        "to be sent it"
    )
    error.retryable = True
    return error


def unread(error: ApiError, waited_s: float) -> ApiError:
    """The key's reuse (`reused`) by a retry of a request that ended, whose answer the edges' store (slow or out of
    reach) told nothing of within waited_s: it may be kept there for the next retry, which the SDKs then send
    (`retryable`). Never served or charged again: the router refused it."""
    error.message += (
        f". Whether its answer was kept could not be read within {waited_s:g} s (the edge's store did not answer): "
        f"retry with this {SHOWN} to be sent it"
    )
    error.retryable = True
    return error
