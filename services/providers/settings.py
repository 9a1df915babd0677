"""Settings of the providers service (environment variables prefixed PROVIDERS_)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from llmrouter.settings import GrpcServiceSettings, RepoPath


class ProvidersSettings(GrpcServiceSettings):
    model_config = SettingsConfigDict(env_prefix="PROVIDERS_", extra="ignore", frozen=True)

    port: int = Field(default=50052, ge=0, le=65535, description="gRPC port; 0 picks a free one")
    metrics_port: int = Field(default=9102, ge=0, le=65535, description="Prometheus port; 0 disables")
    callers: str = "router"  # who may call (docs/conventions.md, Authentication)
    registry_path: RepoPath = Field(default=Path("config/models.yaml"), description="the model registry (YAML)")
    registry_reload_s: float = Field(
        default=5.0, gt=0, description="how often the registry file and the key files are checked"
    )
    local_model_dir: RepoPath = Field(default=Path("artefacts/smollm2"), description="built by `make local-model`")
    local_threads: int = Field(default=2, ge=1, le=64, description="CPU threads per local generation")
    api_keys_dir: Path | None = Field(
        default=None, description="directory of key files named like the registry's api_key_env (a mounted Secret)"
    )
