"""Who is calling a gRPC service: the caller's identity from its client certificate (mTLS) or its bearer
token, mapped to its rights. The server interceptor authenticates every call but health checking and
reflection; servicers read the result with `current_identity()` and never see credentials."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal

import grpc

from llmrouter.errors import ServiceError

Mode = Literal["mtls", "token", "none"]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Identity:
    """An authenticated caller. One that may act for tenants (the edge, which authenticates end users) is
    believed about the request's tenant and key; any other pays as `tenant` whatever the request says."""

    name: str
    tenant: str | None
    may_act_for_tenants: bool = False


# auth=none: every caller is trusted as callers were before authentication existed.
ANONYMOUS = Identity("anonymous", None, may_act_for_tenants=True)

_current: ContextVar[Identity] = ContextVar("llmrouter_identity")


def current_identity() -> Identity:
    """The identity of the call being served; LookupError outside one (a servicer run without the
    interceptor must not be mistaken for a trusted caller)."""
    return _current.get()


@contextmanager
def acting_as(identity: Identity) -> Iterator[None]:
    token = _current.set(identity)
    try:
        yield
    finally:
        # A streaming handler cancelled by its caller is closed from another task, in a context where this
        # was never set: there is nothing to undo there (and reset would raise, failing the close).
        with suppress(ValueError):
            _current.reset(token)


def parse_callers(text: str) -> dict[str, Identity]:
    """'name', 'name=tenant' or 'name=*' entries, comma- or newline-separated. A caller listed twice with two rights
    is refused: which one it has would be the order the entries are read in."""
    callers: dict[str, Identity] = {}
    for entry in filter(None, (part.strip() for part in text.replace(",", "\n").splitlines())):
        name, sep, tenant = (part.strip() for part in entry.partition("="))
        if not _NAME.match(name) or (sep and tenant != "*" and not _NAME.match(tenant)):
            raise ValueError(f"caller entry {entry!r}: expected name, name=tenant or name=*")
        trusted = tenant == "*"
        identity = Identity(name, None if trusted else (tenant or name), may_act_for_tenants=trusted)
        if callers.setdefault(name, identity) != identity:
            raise ValueError(f"caller {name!r} is listed twice, with two tenants (or a tenant and *)")
    return callers


def parse_tokens(entries: list[tuple[str, str]]) -> dict[bytes, str]:
    """'sha256hex=identity' entries, each with where it is (`ROUTER_AUTH_TOKENS_FILE line 3`): the server keeps token
    digests, never tokens. A token given to two identities is refused, naming where and to whom it was given first,
    never the digest: its holder would be whichever came last."""
    digests: dict[bytes, tuple[str, str]] = {}
    for place, line in entries:
        digest, _, name = (part.strip() for part in line.partition("="))
        if not _DIGEST.match(digest) or not _NAME.match(name):
            raise ValueError(f"{place}: token entries are sha256-hex=identity (64 lowercase hex digits, then a name)")
        first_name, first_place = digests.setdefault(bytes.fromhex(digest), (name, place))
        if first_name != name:
            raise ValueError(f"{place} gives a token already given to {first_name!r} ({first_place})")
    return {digest: name for digest, (name, _) in digests.items()}


def token_digest(token: str) -> str:
    """What the server is configured with for `token` (`printf %s TOKEN | sha256sum` gives the same)."""
    return hashlib.sha256(token.encode()).hexdigest()


def unauthenticated(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED", message)


class Authenticator:
    def __init__(self, mode: Mode, callers: Mapping[str, Identity], tokens: Mapping[bytes, str]) -> None:
        self.mode = mode
        self.callers = dict(callers)
        self.tokens = list(tokens.items())

    def identify(self, context: Any) -> Identity:
        """The caller's identity, or a ServiceError: UNAUTHENTICATED without valid credentials,
        PERMISSION_DENIED for an authenticated caller this service does not serve."""
        if self.mode == "none":
            return ANONYMOUS
        name = self._certificate_name(context) if self.mode == "mtls" else self._token_name(context)
        identity = self.callers.get(name)
        if identity is None:
            raise ServiceError(grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED", f"{name!r} may not call this")
        return identity

    @staticmethod
    def _certificate_name(context: Any) -> str:
        # The TLS handshake already refused certificates not signed by our CA; this reads the subject CN.
        names = context.auth_context().get("x509_common_name") or []
        if len(names) != 1:
            raise unauthenticated("a client certificate with a subject common name is required")
        return bytes(names[0]).decode("utf-8", "replace")

    def _token_name(self, context: Any) -> str:
        values = [value for key, value in context.invocation_metadata() or () if key == "authorization"]
        scheme, _, token = (values[0] if len(values) == 1 and isinstance(values[0], str) else "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise unauthenticated("an 'authorization: Bearer <token>' header is required")
        presented = hashlib.sha256(token.encode()).digest()
        found = ""
        for digest, name in self.tokens:  # every entry compared, in constant time each
            if hmac.compare_digest(digest, presented):
                found = name
        if not found:
            raise unauthenticated("unknown bearer token")
        return found
