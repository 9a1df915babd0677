"""The passthrough fields that name an end user or a prompt-cache bucket (user, safety_identifier,
prompt_cache_key), scoped to the paying tenant before they reach a provider. Every tenant shares the providers'
accounts: sent as written, tenant B could send tenant A's end-user id and have it flagged by the provider's abuse
monitoring, or steer its requests into the prompt-cache bucket tenant A's key names. Each string value is replaced
by an HMAC keyed per tenant: the same for the same tenant and value (the provider's per-user tracking and cache
routing work within a tenant), different across tenants, and not the caller's text (OpenAI asks for a hash of user ids
anyway). With the server's secret (ROUTER_END_USER_HASH_SECRET) the tenant's key is HMAC(secret, tenant): the same on
every replica and across restarts, and no one without the secret (a provider, whoever reads its logs) can confirm a
guessed value (an email address). Without it the key is the tenant's name, no secret: whoever knows it can confirm a
guess, so callers whose end-user ids are guessable send a hash of their own. Setting or changing the secret changes
every value sent: the providers see new end users and cold prompt-cache buckets. Only what is sent changes: the
response cache key and the answer are the caller's request's."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from pydantic import SecretStr

from llmrouter.validation import passthrough

END_USER_FIELDS = ("user", "safety_identifier", "prompt_cache_key")
# 128 bits as hex: far from a collision at any number of end users, within OpenAI's 64 characters and Anthropic's 256.
SCOPED_HEX_CHARS = 32


def secret_bytes(secret: SecretStr) -> bytes:
    """The secret's bytes as the environment held them (os.environ decodes bytes that are no UTF-8 as surrogates)."""
    return secret.get_secret_value().encode("utf-8", "surrogateescape")


def tenant_key(tenant: str, secret: bytes | None) -> bytes:
    """The HMAC key of `tenant`'s end-user ids: HMAC-SHA256(secret, tenant) with the server's secret, else the tenant's
    name. surrogatepass: a JSON string may hold a lone surrogate ("\\ud800")."""
    name = tenant.encode("utf-8", "surrogatepass")
    return name if secret is None else hmac.new(secret, name, hashlib.sha256).digest()


def scoped_id(tenant: str, value: str, secret: bytes | None = None) -> str:
    """`value` as sent for `tenant`: HMAC-SHA256 under the tenant's key."""
    message = value.encode("utf-8", "surrogatepass")
    return hmac.new(tenant_key(tenant, secret), message, hashlib.sha256).hexdigest()[:SCOPED_HEX_CHARS]


def _named(value: Any) -> bool:
    """Whether an end-user field's value names someone. Empty names no one: scoped, it would make every request of a
    tenant that names none one end user (and one cache bucket) to the provider. Validation leaves no value but a
    string or null (llmrouter/validation.py)."""
    return isinstance(value, str) and value != ""


class EndUserScope:
    """The end-user fields scoped under the server's secret (RouterSettings.end_user_hash_secret), if any."""

    def __init__(self, secret: SecretStr | None) -> None:
        self.secret = None if secret is None else secret_bytes(secret)

    def passthrough_json(self, passthrough_json: str, tenant: str) -> str:
        """passthrough_json (validated: a JSON object, or nothing) as sent for `tenant`: its end-user fields scoped,
        written as the edge writes it (json.dumps's own separators)."""
        fields = passthrough(passthrough_json)
        if not fields:
            return passthrough_json
        scoped = {
            name: scoped_id(tenant, value, self.secret) if name in END_USER_FIELDS and _named(value) else value
            for name, value in fields.items()
        }
        # ASCII: another field's lone surrogate, written as an escape, stays one (raw, it is no UTF-8 for protobuf).
        return json.dumps(scoped)
