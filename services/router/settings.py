"""Router settings: ROUTER_* environment variables, validated at start."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Mapping
from decimal import Decimal
from functools import cached_property
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from llmrouter.private_paths import default_path
from llmrouter.redis_url import RedisUrl
from llmrouter.registry import DEFAULT_REGISTRY
from llmrouter.settings import REPO_ROOT, GrpcServiceSettings, RepoPath
from services.ledger.settings import LedgerSettings
from services.router.end_users import secret_bytes
from services.router.policy import FallbackRule
from services.router.store import (
    ANSWER_KEPT_BYTES,
    ANSWER_KEPT_S,
    DEFERRED_HOLD_S,
    HOLD_S,
    HOLDS_LINGER_S,
    MASTER_ANSWERS_S,
    REQUEST_ID_TTL_S,
    HoldTotals,
)

# The time kept for a request's charge to land after its last token.
CHARGE_LANDS_S = 60
# The longest a request may run: a hold lives HOLD_S, and the charge after the last token needs time to land.
MAX_REQUEST_S = HOLD_S - CHARGE_LANDS_S

# The longest heartbeat TTL. The TTL is also the reconciler's lease and the least time between its sweeps
# (RedisStore.reconcile): a dead router's pending charges are settled up to about 3 TTLs and an upkeep interval (a third
# of a TTL at most) after its last beat (its beat lapses a TTL after it, it is taken for dead once gone a TTL more, the
# next sweep comes up to a TTL later), a stale one up to a TTL and an interval late. A key move counts a hold as
# chargeable up to CHARGED_LATE_S (HOLD_S, 600 s) past its expiry (redis_store.py, _carry): 10/3 x 120 s = 400 s stays
# within it, with room for slow rounds. Longer, a charge could land in a period the move did not carry (the key's limit
# spent twice), and a huge value (an hour typed in milliseconds) would leave a dead router's charges unsettled, the
# lease of a dead reconciler held, and LLMRouterUpkeepRoundHung (4 TTLs) silent, for as long.
MAX_HEARTBEAT_TTL_S = 120

Share = Annotated[float, Field(ge=0, le=1)]
# Who the response cache serves an answer again: any key of the tenant that paid for it, or that key alone.
CacheScope = Literal["tenant", "key"]


def tenant_wide(scope: CacheScope, tenant_scope: Mapping[str, CacheScope], tenant: str) -> bool:
    """Whether `tenant`'s keys share what the router keeps of their requests (cached answers, classifier scores):
    its own scope (ROUTER_TENANT_CACHE_SCOPE), else the router's (ROUTER_CACHE_SCOPE)."""
    return tenant_scope.get(tenant, scope) == "tenant"


# The shortest end_user_hash_secret: 128 bits, as the HMAC key of every tenant's end-user ids.
MIN_END_USER_SECRET_BYTES = 16


class BudgetPeriodSettings(BaseSettings):
    """ROUTER_BUDGET_PERIOD: the period whose spend counters the routers charge, part of the router's settings and all
    that the money commands read of them (money_check ledger-spend, which serves nothing)."""

    model_config = SettingsConfigDict(env_prefix="ROUTER_", extra="ignore", frozen=True)

    budget_period: Literal["day", "month", "total"] = "day"


# ROUTER_PENDING_STALE_S: how old a live router's pending charge may grow before the reconciler charges it its hold.
# Above CHARGE_LANDS_S, as no router runs with less (request_timeout_s and CHARGE_LANDS_S at least): a key move told 60,
# an hour in minutes, is refused rather than carrying too little.
PendingStaleS = Annotated[float, Field(gt=CHARGE_LANDS_S, le=HOLDS_LINGER_S)]


class PendingStaleSettings(BaseSettings):
    """ROUTER_PENDING_STALE_S as a key move reads it (key_move.py: how far it carries a hold past its expiry), validated
    as the router's. Unset (None), the move goes by the values routers publish, else by the longest it may be: run where
    the routers' settings are not, it cannot tell their default from a longer value, and carrying too little lets a key
    spend its limit twice."""

    model_config = SettingsConfigDict(env_prefix="ROUTER_", extra="ignore", frozen=True)

    pending_stale_s: PendingStaleS | None = None


class RequestIdSettings(BaseSettings):
    """ROUTER_REQUEST_ID_TTL_S, part of the router's settings and read by money_check ledger-charges (which serves
    nothing): the SQL ledger's charges within it are those whose request ids the money store must know."""

    model_config = SettingsConfigDict(env_prefix="ROUTER_", extra="ignore", frozen=True)

    # How long a request id stays used (a replay within it is refused and never charged twice). Memory in Redis:
    # about 400 bytes per request for its two markers, so 1M requests a day need ~400 MB per day kept. The
    # in-process store keeps at most its last 10,000 ids (MemoryStore.MAX_REQUEST_IDS).
    request_id_ttl_s: int = Field(default=REQUEST_ID_TTL_S, gt=0)


# The ledger's settings: services/ledger/settings.py.
class RouterSettings(GrpcServiceSettings, LedgerSettings, BudgetPeriodSettings, RequestIdSettings):
    model_config = SettingsConfigDict(env_prefix="ROUTER_", extra="ignore", frozen=True)

    port: int = Field(default=50053, ge=0, le=65535)
    metrics_port: int = Field(default=9103, ge=0, le=65535, description="Prometheus port; 0 disables")
    callers: str = "edge=*"  # who may call (docs/conventions.md, Authentication)
    registry_path: RepoPath = DEFAULT_REGISTRY
    registry_reload_s: float = Field(default=5.0, gt=0, description="how often the registry file is checked")
    classifier_addr: str = "127.0.0.1:50051"
    providers_addr: str = "127.0.0.1:50052"
    # The money store: spend, holds, request ids, pending charges, ledger. It must never evict keys
    # (maxmemory-policy noeviction; the router refuses to start otherwise) and should persist (AOF).
    # Unset: an in-process store stands in for Redis (one replica only; budgets reset on restart).
    redis_url: RedisUrl | None = None  # its password masked when shown (llmrouter/redis_url.py)
    # Development only: start even when the money store may evict keys.
    allow_evicting_money_store: bool = False
    # The response cache's own Redis (may evict: allkeys-lru). Unset: an in-process cache per router.
    cache_redis_url: RedisUrl | None = None
    # This router instance's id, which names it in pending charges, heartbeats and the reconciler's lease with a suffix
    # of its process's (router_name; default: host name and a random suffix).
    instance_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}")
    # Where charges wait (an append-only file) when the money store is unreachable. The default, in this user's own
    # directory under the temp directory (<tempdir>/llmrouter-<uid>/router, made 0700), survives container restarts
    # in the chart (an emptyDir on /tmp); a volume that outlives the pod is better still (the chart's
    # router.outbox.persistence: a claim per pod, which the pod made again replays at its start). Charges lost with it
    # are not lost to the budgets: the reconciler settles them at their hold. Its lines are replayed as charges, so the
    # start refuses a directory or file of another user's, a symbolic link, or one others may write (a file of this
    # user's they may only read is made private); below the temp directory its group too, and every directory on the
    # way (llmrouter/private_paths.py has the rules).
    data_dir: RepoPath = default_path("router")
    # The upkeep loop: heartbeat, outbox replay, reconciler. A router whose heartbeat is older than
    # heartbeat_ttl_s is dead: its pending charges are settled at their hold. At most MAX_HEARTBEAT_TTL_S (the
    # reconciler's lease too).
    upkeep_interval_s: float = Field(default=2.0, gt=0)
    heartbeat_ttl_s: float = Field(default=15.0, ge=0.01)  # Redis expiries are whole milliseconds
    # A pending charge of a live router older than this lost its charge (store and outbox both failed): it is
    # settled at its hold. Longer than any request may run: at least request_timeout_s + CHARGE_LANDS_S.
    pending_stale_s: PendingStaleS = 3600.0
    # On a Redis Cluster money store, how long the reconciler's round and the outbox's replay wait for each master to
    # answer a PING as they begin: the shards of one that has not are passed over that round (their charges wait, in
    # the store or the outbox, for the next), where each call of theirs would wait out the cluster client's retries,
    # seconds a shard. At most the client's socket timeout (5 s), past which no answer comes anyway.
    reconcile_master_answers_s: float = Field(default=MASTER_ANSWERS_S, gt=0, le=5)
    # How long a provider batch line's hold lasts (the provider's 24 h window and a margin to collect it): admission
    # counts it against the budgets that long. A collect in its last quarter, at most 600 s, gives up on the
    # provider batch: the lines still pending are charged their hold. Shorter than the provider's window only in
    # tests (the lines are then charged their hold before the provider may answer).
    provider_batch_hold_s: float = Field(default=DEFERRED_HOLD_S, ge=1, le=7 * 86400)
    # Each provider batch line a collect settles is kept in the money Redis, as the collect tells it (compressed,
    # without log-probabilities), for a later collect to tell again should the reply be lost: for this long (at least
    # a provider's 24 h window, within which the caller's batch collects again; at most a week, the longest hold), and
    # only when at most this large (at least 4 KiB, a short answer; at most 8 MiB, half a reply's gRPC message).
    # Longer or larger holds more of the money Redis, which every tenant's charges need (redis.money.maxmemory).
    batch_answer_kept_s: float = Field(default=ANSWER_KEPT_S, ge=86_400, le=7 * 86_400)
    batch_answer_kept_bytes: int = Field(default=ANSWER_KEPT_BYTES, ge=4 * 1024, le=8 * 1024 * 1024)
    # How admission counts a budget's holds in the money Redis: 'trust', by each holds set's running total (constant
    # time, however many requests are in flight), 'maintain', by a scan of the set (time growing with the requests
    # in flight), the totals still kept, or 'auto': 'maintain' while any live router's heartbeat says it keeps no
    # totals (a version before them, in a rolling upgrade), 'trust' once none is left, every total kept so far
    # rebuilt from its set then (README, Money: running hold totals). The in-process store always trusts its own.
    hold_totals: HoldTotals = "auto"

    # Routing targets when a request sets none: the tenant's strong share or quality kept, else the default strong
    # share or quality kept, else the default quality target (a fraction of the best candidate's predicted quality;
    # see policy.plan). A tenant, and the default, has a strong share or a quality kept, not both.
    default_quality_target: Share = 0.85
    default_strong_share: Share | None = None
    tenant_strong_share: dict[str, Share] = Field(default_factory=dict)  # JSON: {"tenant": 0.2}
    default_quality_kept: Share | None = None
    tenant_quality_kept: dict[str, Share] = Field(default_factory=dict)  # JSON: {"tenant": 0.95}
    # Strong shares and qualities kept are turned into quality targets with this file
    # (python -m services.classifier.calibrate).
    calibration_path: RepoPath = REPO_ROOT / "artefacts" / "classifier" / "calibration.json"
    # Tenants with their own label on llmrouter_router_routed_total, quality_kept_ratio and budget_rejections_total (the
    # first seen); the rest are "other".
    metrics_tenants: int = Field(default=20, ge=0, le=1000)
    # Output tokens assumed when the caller sets no max_tokens, for the cost estimates that rank models. What
    # admission holds is the worst case: the most the model may write.
    expected_output_tokens: int = Field(default=256, gt=0)
    # The shortest answer worth serving: when max_cost_usd or the remaining budget cannot pay for this many
    # output tokens, the request is refused rather than served with a smaller max_tokens.
    min_output_tokens: int = Field(default=16, gt=0)
    classifier_timeout_s: float = Field(default=0.5, gt=0)
    # How a request is routed when the classifier cannot score it within classifier_timeout_s (services/router/
    # unclassified.py): `length`, the tier its prompt's length picks, calibrated on the reference mix; `strongest`
    # (quality kept, savings lost: the price of the strongest tier for the whole outage); `cheapest`.
    classifier_fallback: FallbackRule = "length"
    # Classifier answers kept for prompts seen again (services/router/score_cache.py); 0 turns the cache off.
    score_cache_entries: int = Field(default=10_000, ge=0)
    # The longest a request may run from admission to its last token, fallbacks and escalation included, whatever
    # the caller's deadline: then generation is cut and charged (a stream what it delivered, a call cut mid-way
    # its worst case). Below a hold's life, so no hold expires while its request runs.
    request_timeout_s: float = Field(default=300.0, gt=0, le=MAX_REQUEST_S)
    models_refresh_s: float = Field(default=10.0, gt=0)

    # Spend limits per budget period (BudgetPeriodSettings), in USD; unset means unlimited. Keyed by tenant and key.
    tenant_budget_usd: Decimal | None = Field(default=None, ge=0)
    key_budget_usd: Decimal | None = Field(default=None, ge=0)
    # Requests per minute per API key (per tenant when no key), Decides and requests refused for a budget included;
    # 0 disables.
    rate_limit_rpm: int = Field(default=0, ge=0)
    # Tokens per minute per API key (per tenant when no key), as LiteLLM's tpm_limit: the input and output tokens
    # charged in the minute (counted as each request is charged); a request (a Decide too) is refused while they are at
    # or over it, a limit on usage so far, not a prediction of the request's. 0 disables.
    rate_limit_tpm: int = Field(default=0, ge=0)
    # Response cache for identical requests; 0 disables.
    cache_ttl_s: int = Field(default=300, ge=0)
    # Who is served a cached answer again: `key`, the API key whose request it answered (requests without a key are
    # one key per tenant), or `tenant`, any key of that tenant: more hits, but a hit (free, fast, x_router.cache_hit)
    # tells a key that a colleague sent the same request within cache_ttl_s. Per tenant: ROUTER_TENANT_CACHE_SCOPE.
    # The classifier's kept scores (score_cache.py) are shared as the answers are: a hit makes a Decide faster.
    cache_scope: CacheScope = "key"
    tenant_cache_scope: dict[str, CacheScope] = Field(default_factory=dict)  # JSON: {"tenant": "tenant"}

    # Budget alerts: gauges of budget use every budget_watch_interval_s (for the 80% and 100% alerts) and,
    # when set, a JSON POST to this URL once per budget, threshold and period (retried).
    budget_watch_interval_s: float = Field(default=30.0, gt=0)
    budget_alert_webhook_url: SecretStr = SecretStr("")
    # Escalating a weak answer (empty, truncated, refused, doubted) to a stronger tier when the request does
    # not say (services/router/escalation.py): off, auto or strict.
    escalation: str = Field(default="auto", pattern="^(off|auto|strict)$")
    # The answer verifier (Classifier/Verify, on the classifier service) is asked about an answer from a cheaper
    # tier than the plan's strongest when escalation is on. Unavailable or later than verifier_timeout_s: the
    # answer is kept (counted in llmrouter_router_verifier_total).
    verifier: bool = True
    verifier_timeout_s: float = Field(default=1.0, gt=0)
    # Per mode, the P(good) below which to escalate, replacing the thresholds calibrated for the verifier
    # (JSON: {"auto": 0.4, "strict": 0.6}); a request's verifier_threshold replaces both. With verifier and
    # verifier_modes, part of the response cache's key for the requests the verifier judges (cache.py).
    verifier_escalate_below: dict[Literal["auto", "strict"], Share] = Field(default_factory=dict)
    # The escalation modes that ask the verifier (a request with its own verifier_threshold asks in any). Not
    # `auto` by default: on open-ended chat even the lowest held-out threshold (0.035) escalated 77% of cheap
    # answers in the cascade evaluation, paying both models; `strict` is the caller's choice of quality over cost.
    verifier_modes: frozenset[Literal["auto", "strict"]] = frozenset({"strict"})
    # How long a session (session_id) keeps its model after its last turn, in the cache store; 0 disables.
    session_ttl_s: int = Field(default=3600, ge=0)
    # The server's secret keying the end-user fields sent to providers (user, safety_identifier, prompt_cache_key;
    # services/router/end_users.py): each tenant's key is HMAC(secret, tenant), so without the secret no one can
    # confirm a guessed end-user id. The same on every replica; changing it gives the providers new end users and cold
    # prompt-cache buckets. Unset: keyed by the tenant's name alone (a warning at start).
    end_user_hash_secret: SecretStr | None = None

    @cached_property
    def router_name(self) -> str:
        """This process's name in pending charges, heartbeats and the reconciler's lease: the instance id and a random
        suffix of its own. A router restarted under the same ROUTER_INSTANCE_ID (a pod's name, which a container
        restart keeps) so takes its previous process for another router, dead once its heartbeat has lapsed a TTL, and
        the reconciler settles the pending charges that process left at their holds, not ROUTER_PENDING_STALE_S later
        as its own (a live router's charges lost). Routers of the version before, which name themselves by the id
        alone, take it for any other router."""
        return f"{self.instance_id}.{uuid.uuid4().hex[:8]}"

    @field_validator("end_user_hash_secret")
    @classmethod
    def _end_user_secret_long_enough(cls, secret: SecretStr | None) -> SecretStr | None:
        if secret is not None and len(secret_bytes(secret)) < MIN_END_USER_SECRET_BYTES:
            raise ValueError(
                f"must be at least {MIN_END_USER_SECRET_BYTES} bytes (a short one can be guessed, and with it every "
                "end-user id the providers see); e.g. `openssl rand -hex 32`, or unset it"
            )
        return secret

    @model_validator(mode="after")
    def _one_calibrated_aim(self) -> RouterSettings:
        # Two aims for one tenant (or for the default) would leave which one routes to the order they are read in.
        if self.default_strong_share is not None and self.default_quality_kept is not None:
            raise ValueError("set ROUTER_DEFAULT_STRONG_SHARE or ROUTER_DEFAULT_QUALITY_KEPT, not both")
        if both := sorted(self.tenant_strong_share.keys() & self.tenant_quality_kept.keys()):
            raise ValueError(
                f"tenants in both ROUTER_TENANT_STRONG_SHARE and ROUTER_TENANT_QUALITY_KEPT: {', '.join(both)}"
            )
        return self

    @field_validator("heartbeat_ttl_s")
    @classmethod
    def _heartbeat_ttl_bounded(cls, ttl_s: float) -> float:
        if ttl_s > MAX_HEARTBEAT_TTL_S:
            raise ValueError(
                f"must be at most {MAX_HEARTBEAT_TTL_S} s (seconds, not milliseconds): it is the reconciler's lease "
                "and the time between its sweeps, and a dead router's pending charges wait about 3 TTLs to be settled"
            )
        return ttl_s

    @model_validator(mode="after")
    def _heartbeat_outlasts_upkeep(self) -> RouterSettings:
        # A heartbeat that expires between two beats makes a live router look dead to the reconciler, which
        # would then settle its requests at their holds while they run.
        if self.heartbeat_ttl_s < 3 * self.upkeep_interval_s:
            raise ValueError(
                "ROUTER_HEARTBEAT_TTL_S must be at least 3 x ROUTER_UPKEEP_INTERVAL_S (a live router must never look "
                "dead)"
            )
        return self

    @model_validator(mode="after")
    def _charged_marker_outlasts_requests(self) -> RouterSettings:
        # A request's charged marker keeps it charged once: a reconciler that took its router for dead (cut off
        # from the store) charges it at its hold, and the router's own charge must still find the marker.
        if self.request_id_ttl_s < self.request_timeout_s + CHARGE_LANDS_S:
            raise ValueError(
                f"ROUTER_REQUEST_ID_TTL_S ({self.request_id_ttl_s} s) must be at least ROUTER_REQUEST_TIMEOUT_S "
                f"({self.request_timeout_s:g} s) + {CHARGE_LANDS_S} s: a request's charged marker must outlive it, "
                "or a request the reconciler charged could be charged again by its own router"
            )
        return self

    @model_validator(mode="after")
    def _pending_outlasts_requests(self) -> RouterSettings:
        # The reconciler charges every pending charge older than pending_stale_s at its hold, a live router's too: a
        # request still running then would be charged its worst case, and its own charge refused as a repeat.
        if self.pending_stale_s < self.request_timeout_s + CHARGE_LANDS_S:
            raise ValueError(
                f"ROUTER_PENDING_STALE_S ({self.pending_stale_s:g} s) must be at least ROUTER_REQUEST_TIMEOUT_S "
                f"({self.request_timeout_s:g} s) + {CHARGE_LANDS_S} s for the charge to land: the reconciler "
                "charges a pending charge older than ROUTER_PENDING_STALE_S its hold, a request still running too"
            )
        return self
