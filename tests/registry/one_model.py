"""A registry of one model, for tests of what the registry makes of a model's and its provider's fields."""

from __future__ import annotations

from typing import Any

from llmrouter.registry import Registry


def one_model_registry(kind: str, provider: dict[str, Any] | None = None, **flags: Any) -> Registry:
    """Model `m` of provider `p` (of `kind`, with the `provider` fields given) in tier `t`; flags set the model's
    other fields."""
    model = {
        "name": "m",
        "provider": "p",
        "tier": "t",
        "input_usd_per_mtok": "1",
        "output_usd_per_mtok": "1",
        "context_window": 1000,
        "quality_prior": 0.5,
        **flags,
    }
    providers = {"p": {"kind": kind, "base_url": "http://x", **(provider or {})}}
    return Registry.model_validate({"tiers": ["t"], "providers": providers, "models": [model]})
