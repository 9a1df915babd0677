"""The Idempotency-Key of POST /v1/batches and POST /v1/files: a retry (the openai SDK's own, after a timeout) gets the
batch or file the first request created, not a second one (a second batch's lines were held and charged again).

The record lives in the batch store beside what it names (store.py): `idempotency:<kind>:<hash of tenant, API key
digest and value>`, holding '<id> <digest of the request>', for as long as the item is kept. The item is written
before its record is claimed, and the claim is one step: of creations racing on one value, one holds the record and
the others drop what they wrote and answer its item, which is there to be read (a batch still being created, which
may yet be undone, is a 409 to retry: in_use). A record whose item is gone (undone, deleted, expired, or a batch whose
creation died part way: CREATING_S) is taken over by the next creation, whatever its request. A batch so taken over is
failed first, in one step while still `validating` (api.py), and a run starts only a batch still `validating`, in one
step too (runner.py): a creation that only stalled, resuming, activates a batch that ends without running. The same
value with another request is a 422 while its item is there."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from services.batches.store import PREFIX, Store
from services.edge.idempotency import SHOWN
from services.edge.openai_api import ApiError

# A batch still `validating`, not among those to run, this long after its creation was left so by a creation that died
# part way (its writes take seconds, each failing within the store's 10 s timeout): taken over, as one gone.
CREATING_S = 600
TAKES = 3  # a record whose item is gone is taken over; racing takers that many times is a 409 to try again
# An item's fields, read once, when it is there to be told (else None; in_use while it is still being created, which
# may yet be undone): its reply is made of them, not of a second read that finds it gone since (a 500).
StillThere = Callable[[str], Awaitable[dict[str, bytes] | None]]
Made = tuple[str, dict[str, bytes]]


@dataclass(frozen=True)
class Claim:
    kind: str  # 'batch' or 'file'
    key: str
    digest: str  # of the request: the same value with another is refused

    def value(self, item_id: str) -> str:
        return f"{item_id} {self.digest}"


def claim_for(kind: str, tenant: str, api_key: str, sent: str, request: bytes) -> Claim:
    """The record of `sent` (an Idempotency-Key, as services.edge.idempotency.sent_key checked it) of `api_key` of
    `tenant` for `kind`, `request` the bytes that say what was asked. Two keys sending one value are two records."""
    key_digest = hashlib.sha256(api_key.encode()).hexdigest()
    material = json.dumps(["idempotency-key", kind, tenant, key_digest, sent]).encode()
    name = f"{PREFIX}idempotency:{kind}:{hashlib.sha256(material).hexdigest()[:48]}"
    return Claim(kind, name, hashlib.sha256(request).hexdigest())


async def existing(store: Store, claim: Claim, still_there: StillThere) -> Made | None:
    """The item the record names and its fields, while there is one and it is still there; a 422 when another request
    made it."""
    held = await store.claimed(claim.key)
    return None if held is None else await _told(held, claim, still_there)


async def take(store: Store, claim: Claim, item_id: str, ttl_s: int, still_there: StillThere) -> Made | None:
    """The record claimed for `item_id` (written already) for ttl_s: None when this creation holds it, else the item of
    the creation that does and its fields (the caller drops its own)."""
    replacing = ""
    for _ in range(TAKES):
        held = await store.claim(claim.key, claim.value(item_id), ttl_s, replacing)
        if held is None:
            return None
        if (made := await _told(held, claim, still_there)) is not None:
            return made
        replacing = held  # its item undone or gone since: taken over, unless another creation took it first
    raise in_use(claim.kind)


def in_use(kind: str) -> ApiError:
    """The 409 of a value whose item is still being created (as Stripe's: the openai SDK retries it on its own)."""
    return ApiError(
        409,
        f"this {SHOWN} is being used by another request creating a {kind}: retry shortly",
        param=SHOWN,
        code="idempotency_key_in_use",
        retry_after="1",
    )


async def _told(held: str, claim: Claim, still_there: StillThere) -> Made | None:
    """The item the record `held` names and its fields while it is there; a 422 when another request made it. Gone
    (deleted, undone, expired), it names nothing: the value is free, whatever request used it before."""
    item_id, _, digest = held.partition(" ")
    fields = await still_there(item_id)
    if fields is None:
        return None
    if digest != claim.digest:
        raise ApiError(
            422,
            f"this {SHOWN} was used by this API key to create {claim.kind} {item_id} from another request: send a "
            f"new {SHOWN} for another {claim.kind}",
            param=SHOWN,
            code="idempotency_key_mismatch",
        )
    return item_id, fields
