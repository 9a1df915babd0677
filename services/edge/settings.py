"""Edge settings: EDGE_* environment variables, validated at start."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from llmrouter.redis_url import RedisUrl
from llmrouter.setting_entries import setting_entries
from llmrouter.settings import ServiceSettings, is_loopback
from services.batches.quota import counted_bytes
from services.batches.wire import DAY_S
from services.edge.keys import KeyRing, parse_key_entries, parse_keys


class EdgeSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="EDGE_", extra="ignore", frozen=True)

    port: int = Field(default=8080, ge=0, le=65535)
    metrics_port: int = Field(default=9104, ge=0, le=65535, description="Prometheus port; 0 disables")
    router_addr: str = "127.0.0.1:50053"
    # Client API keys as `<tenant> <sha256 hex of the key>` entries (services/edge/keys.py): comma- or
    # newline-separated in api_keys, one per line in api_keys_file. Both may be set; the entries add up.
    api_keys: SecretStr = SecretStr("")  # secret in case a raw key is pasted here by mistake: never echoed
    api_keys_file: Path | None = None
    # How often api_keys_file is read again (services/edge/key_reload.py): a key taken out of it is refused, and one
    # added served, within this of the file's change (a mounted Secret's, within about a minute of its edit).
    api_keys_reload_s: float = Field(default=5.0, gt=0)
    # No keys: every caller is one anonymous tenant. Only on a loopback host, unless this says so.
    allow_anonymous: bool = Field(default=False, validate_default=True)
    # A completion's deadline at the edge: longer than the router's own limit on it (ROUTER_REQUEST_TIMEOUT_S, 300 s,
    # fallbacks and escalation included) by room for the router's answer and charge to come back, so that the router's
    # limit is the one that ends a completion, with a known charge. Shorter (it was 120 s), it cut an attempt the
    # providers let run their total_timeout_s (120 s) and the fallback the router's limit leaves room for: a 504 whose
    # charge was the attempt's worst case, or pending, for a completion the router would have served.
    request_timeout_s: float = Field(default=310.0, gt=0)
    max_body_bytes: int = Field(default=8 * 1024 * 1024, gt=0)
    readiness_timeout_s: float = Field(default=1.0, gt=0)
    # A request's line and headers must arrive whole this long after the connection opened or the request began,
    # and its body may stall no longer (services/edge/protocol.py).
    read_timeout_s: float = Field(default=30.0, gt=0)
    # And a body must come at min_body_rate bytes/s or more on average, from body_grace_s after its head on (time
    # the edge held its reading up not counted), else a 408: one trickled a byte at a time, each within the read
    # timeout, would hold its connection, and an upload its place, as long as its caller liked. A body takes at
    # most the longer of body_grace_s and its size over the rate (a 100 MB upload: 28 h at 1 KiB/s). 0: no least
    # rate (only the read timeout, between any two bytes).
    min_body_rate: int = Field(default=1024, ge=0)
    body_grace_s: float = Field(default=10.0, gt=0)
    # An answer's caller may take none of it for no longer, the edge's sending held up meanwhile (a download
    # holding one of batch_max_concurrent_uploads places): its connection is then dropped (within twice this).
    write_timeout_s: float = Field(default=30.0, gt=0)
    # One JSON line per HTTP request, written by a thread off the hot path: stderr, off, or a file path.
    access_log: str = Field(default="stderr", min_length=1)
    # Batches (POST /v1/batches): their files and progress in this Redis, which edge replicas share and a
    # restarted edge resumes from: noeviction and persisted (the chart's redis.batches). Unset: in process.
    batch_redis_url: RedisUrl | None = None  # its password masked when shown (llmrouter/redis_url.py)
    # Idempotency-Key: how long a finished unstreamed request's answer is kept to be sent again to its retry (0: never),
    # the largest kept (a larger one's retry is the router's 409), and what this process keeps of them at most when no
    # batch Redis is set (else they are kept there, shared by the replicas): services/edge/replays.py.
    idempotency_replay_s: int = Field(default=DAY_S, ge=0)
    idempotency_max_answer_bytes: int = Field(default=256 * 1024, gt=0)
    idempotency_memory_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    # How long a keyed request waits on the edge Redis as it arrives (its kept answer, its in-flight marker): past
    # it the store is passed over (counted), the router's id rules telling a retry (a 409, never a second charge).
    idempotency_lookup_timeout_s: float = Field(default=0.5, gt=0)
    # At shutdown, once the requests have drained, how long the answers still being kept (each is sent first, kept
    # after) are given to land before they are given up: a retry after a rolling restart then gets the answer, not
    # the router's 409. Under the 15 s the chart leaves after the drain (terminationGracePeriodSeconds), as it checks.
    idempotency_drain_s: float = Field(default=5.0, ge=0)
    # How long a retry refused by the router as its first ended waits for that first's answer, still being kept by
    # another edge sharing the batch Redis (its in-flight marker still there), before its 409 says so (retryable); its
    # reads of that Redis included (0: one read, within idempotency_lookup_timeout_s).
    idempotency_keeping_wait_s: float = Field(default=5.0, ge=0)
    # One tenant's answers and digests kept per replay window, in the batch Redis (noeviction, shared by every tenant's
    # batches) as stored, else in memory as held: past it an answer is kept as its digest alone, and past that nothing.
    # Cache hits cost nothing, so without it one tenant could fill the store for free with a request resent under new
    # keys (in memory, drop every other tenant's answers, oldest first: there a tenant keeps at most a quarter of
    # idempotency_memory_bytes per window too).
    idempotency_tenant_bytes: int = Field(default=256 * 1024 * 1024, gt=0)
    batch_concurrency: int = Field(default=8, gt=0)  # lines in flight at once, across this edge's batches
    # How often a provider batch (lines sent through a provider's Batch API) is asked whether it has ended.
    batch_poll_s: float = Field(default=60.0, gt=0)
    batch_max_file_bytes: int = Field(default=100 * 1024 * 1024, gt=0)
    # One tenant's files stored at once in the batch store (noeviction, shared by every tenant), in bytes: an upload
    # past it is refused (400 storage_limit_exceeded) until files are deleted or expire. Its batches' output and error
    # files count too, never refused. At least batch_max_file_bytes, or no file of that size could ever be uploaded.
    files_tenant_bytes: int = Field(default=1024 * 1024 * 1024, gt=0, validate_default=True)
    # File uploads at once in this process, each held whole in memory: past it a 429 (Retry-After) before the body.
    batch_max_concurrent_uploads: int = Field(default=4, gt=0)
    # Batches this process runs at once, each holding its input file's content: the others wait in the store,
    # run by another edge or here as a run ends; with API keys, at most half of them (at least one) one tenant's.
    # Memory: see deploy/README.md (edge sizing).
    batch_max_running: int = Field(default=4, gt=0)
    # How long an uploaded file, and an ended batch with its output and error files, are kept.
    batch_retention_s: int = Field(default=30 * 86_400, gt=0)
    # A batch's completion window: lines not sent by its expires_at never are, and it ends `expired`. 24 h, the
    # only window OpenAI's API takes; shorter only in tests, which cannot wait a day for a batch to expire.
    batch_window_s: int = Field(default=DAY_S, gt=0, le=DAY_S)

    @field_validator("files_tenant_bytes")
    @classmethod
    def _room_for_a_file(cls, most: int, info: ValidationInfo) -> int:
        largest = counted_bytes(info.data.get("batch_max_file_bytes", 0))
        if most < largest:
            raise ValueError(
                f"EDGE_FILES_TENANT_BYTES ({most}) is under what a file of EDGE_BATCH_MAX_FILE_BYTES counts "
                f"({largest}; each at least 1024): no file of the largest size allowed could ever be stored; raise it"
            )
        return most

    @field_validator("api_keys")
    @classmethod
    def _keys_parse(cls, text: SecretStr) -> SecretStr:
        parse_key_entries(setting_entries("EDGE_API_KEYS", text.get_secret_value(), None))
        return text

    @field_validator("api_keys_file")
    @classmethod
    def _file_parses(cls, path: Path | None) -> Path | None:
        if path is not None:
            if not path.is_file():
                raise ValueError(f"{path} is not a readable file")
            parse_keys(path.read_text())
        return path

    @field_validator("allow_anonymous")
    @classmethod
    def _keys_or_loopback(cls, allow: bool, info: ValidationInfo) -> bool:
        try:
            keyed = bool(key_ring(info.data.get("api_keys", SecretStr("")), info.data.get("api_keys_file")))
        except ValueError:  # both settings parse alone, not together: _keys_add_up says so, of them
            return allow
        host = info.data.get("host", "127.0.0.1")
        if not allow and not keyed and not is_loopback(host):
            raise ValueError(
                f"no API keys configured and host {host} is not loopback: set EDGE_API_KEYS_FILE (or "
                "EDGE_API_KEYS), or EDGE_ALLOW_ANONYMOUS=true to serve every caller as one anonymous tenant"
            )
        return allow

    @model_validator(mode="after")
    def _keys_add_up(self) -> EdgeSettings:
        self.key_ring()  # a key in both, given to two tenants: each parses alone
        return self

    def key_ring(self) -> KeyRing:
        return key_ring(self.api_keys, self.api_keys_file)


def key_ring(api_keys: SecretStr, api_keys_file: Path | None) -> KeyRing:
    """The keys of both settings, which add up; an entry refused is named by its setting, and the entry or the file's
    own line."""
    return parse_key_entries(setting_entries("EDGE_API_KEYS", api_keys.get_secret_value(), api_keys_file))
