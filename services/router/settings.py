"""Router settings: ROUTER_* environment variables, validated at start."""

from __future__ import annotations

from decimal import Decimal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from llmrouter.registry import DEFAULT_REGISTRY
from llmrouter.settings import GrpcServiceSettings, RepoPath


class RouterSettings(GrpcServiceSettings):
    model_config = SettingsConfigDict(env_prefix="ROUTER_", extra="ignore", frozen=True)

    port: int = Field(default=50053, ge=0, le=65535)
    callers: str = "edge=*"  # who may call (docs/conventions.md, Authentication)
    registry_path: RepoPath = DEFAULT_REGISTRY
    classifier_addr: str = "127.0.0.1:50051"
    providers_addr: str = "127.0.0.1:50052"
    # Unset: an in-process store stands in for Redis (one replica only; budgets reset on restart).
    redis_url: str | None = None

    default_quality_target: float = Field(default=0.7, ge=0, le=1)
    # Output tokens assumed when the caller sets no max_tokens, for the cost estimates that rank models. What
    # admission holds is the worst case: the most the model may write.
    expected_output_tokens: int = Field(default=256, gt=0)
    # The shortest answer worth serving: when max_cost_usd or the remaining budget cannot pay for this many
    # output tokens, the request is refused rather than served with a smaller max_tokens.
    min_output_tokens: int = Field(default=16, gt=0)
    classifier_timeout_s: float = Field(default=0.5, gt=0)
    models_refresh_s: float = Field(default=10.0, gt=0)

    # Spend limits per budget period, in USD; unset means unlimited. Keyed by tenant and by API key.
    budget_period: str = Field(default="day", pattern="^(day|month|total)$")
    tenant_budget_usd: Decimal | None = Field(default=None, ge=0)
    key_budget_usd: Decimal | None = Field(default=None, ge=0)
    # Requests per minute per API key (per tenant when no key); 0 disables.
    rate_limit_rpm: int = Field(default=0, ge=0)
    # Response cache for identical requests; 0 disables.
    cache_ttl_s: int = Field(default=300, ge=0)
