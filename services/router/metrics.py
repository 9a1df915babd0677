"""Router metrics, named as docs/conventions.md lists them (dashboards and alerts depend on the names)."""

from prometheus_client import Counter

REQUESTS = Counter("llmrouter_router_requests_total", "Routed requests", ["model", "reason", "outcome"])
COST = Counter("llmrouter_router_cost_usd_total", "USD charged", ["model"])
BASELINE_COST = Counter(
    "llmrouter_router_baseline_cost_usd_total", "USD the strongest available model would have cost for the same usage"
)
TOKENS = Counter("llmrouter_router_tokens_total", "Tokens served", ["model", "direction"])
ESCALATIONS = Counter("llmrouter_router_escalations_total", "Weak answers escalated", ["from_model", "to_model"])
FALLBACKS = Counter("llmrouter_router_fallbacks_total", "Provider failures routed around", ["from_model", "to_model"])
CACHE = Counter("llmrouter_router_cache_requests_total", "Response cache lookups", ["result"])
BUDGET_REJECTIONS = Counter("llmrouter_router_budget_rejections_total", "Requests refused for an exhausted budget")
RATE_LIMITED = Counter("llmrouter_router_rate_limited_total", "Requests refused by the rate limit")
