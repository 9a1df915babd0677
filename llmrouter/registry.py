"""The model registry: which models exist, who serves them, what they cost and how good they are expected to
be. One YAML file, shared by the router (policy) and the providers service (gateways)."""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from llmrouter.settings import REPO_ROOT
from llmrouter.v1 import common_pb2

DEFAULT_REGISTRY = REPO_ROOT / "config" / "models.yaml"
MTOK = Decimal(1_000_000)


class ProviderSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["openai", "anthropic", "local"]
    base_url: str = ""
    # The key is read from this file, else from the file named like api_key_env in the service's keys directory
    # (a mounted Kubernetes Secret, PROVIDERS_API_KEYS_DIR), else from the environment variable api_key_env.
    api_key_env: str = ""
    api_key_file: str = ""
    headers: dict[str, str] = Field(default_factory=dict)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=60.0, gt=0)
    total_timeout_s: float = Field(default=120.0, gt=0)
    max_retries: int = Field(default=2, ge=0, le=10)
    # Exponential backoff with full jitter between retries; a Retry-After from the provider takes precedence.
    backoff_base_s: float = Field(default=0.25, gt=0)
    backoff_max_s: float = Field(default=8.0, gt=0)
    max_concurrency: int = Field(default=64, ge=1)
    # Circuit breaker per (provider, model): opens after this many consecutive failures, lets one probe
    # through after the cool-down, closes again when the probe succeeds.
    breaker_failures: int = Field(default=5, ge=1)
    breaker_cooldown_s: float = Field(default=30.0, gt=0)

    def api_key(self, keys_dir: Path | None = None) -> str:
        files = [Path(self.api_key_file)] if self.api_key_file else []
        if keys_dir is not None and self.api_key_env:
            files.append(keys_dir / self.api_key_env)
        for path in files:
            if path.is_file():
                return path.read_text().strip()
        return os.environ.get(self.api_key_env, "") if self.api_key_env else ""

    @property
    def needs_key(self) -> bool:
        return bool(self.api_key_env or self.api_key_file)


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    provider: str
    upstream: str = ""  # the provider's own name for the model; defaults to `name`
    tier: str
    input_usd_per_mtok: Decimal = Field(ge=0)
    output_usd_per_mtok: Decimal = Field(ge=0)
    context_window: int = Field(gt=0)
    max_output_tokens: int = Field(default=4096, gt=0)
    latency_slo_ms: int = Field(default=30_000, gt=0)
    tools: bool = True  # can call tools; a request offering tools is routed only to models that can
    # Quality comes from the classifier's prediction for `quality_from` (a model it was trained on),
    # or, for a model it cannot predict, from the fixed prior `quality_prior`.
    quality_from: str = ""
    quality_prior: float | None = Field(default=None, ge=0, le=1)

    @property
    def upstream_name(self) -> str:
        return self.upstream or self.name

    def info(self) -> common_pb2.ModelInfo:
        """The model as callers see it (ListModels)."""
        return common_pb2.ModelInfo(
            name=self.name,
            provider=self.provider,
            tier=self.tier,
            input_usd_per_mtok=str(self.input_usd_per_mtok),
            output_usd_per_mtok=str(self.output_usd_per_mtok),
            context_window=self.context_window,
            latency_slo_ms=self.latency_slo_ms,
        )

    def cost_usd(self, input_tokens: int, output_tokens: int) -> Decimal:
        """Exact cost: Decimal arithmetic on prices per 1M tokens, never a float."""
        return (self.input_usd_per_mtok * input_tokens + self.output_usd_per_mtok * output_tokens) / MTOK


class Registry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Tiers from weakest to strongest; escalation moves right.
    tiers: list[str] = Field(min_length=1)
    providers: dict[str, ProviderSpec]
    models: list[ModelSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> Registry:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate model names in {names}")
        for m in self.models:
            if m.provider not in self.providers:
                raise ValueError(f"model {m.name!r}: unknown provider {m.provider!r}")
            if m.tier not in self.tiers:
                raise ValueError(f"model {m.name!r}: tier {m.tier!r} is not one of {self.tiers}")
            if not m.quality_from and m.quality_prior is None:
                raise ValueError(f"model {m.name!r}: give quality_from (a classifier model) or quality_prior")
        return self

    def get(self, name: str) -> ModelSpec | None:
        return next((m for m in self.models if m.name == name), None)

    def tier_rank(self, model: ModelSpec) -> int:
        return self.tiers.index(model.tier)


def load_registry(path: str | Path | None = None) -> Registry:
    path = Path(path) if path else DEFAULT_REGISTRY
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read model registry {path}: {exc}") from exc
    return Registry.model_validate(raw)
