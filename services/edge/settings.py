"""Edge settings: EDGE_* environment variables, validated at start."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from llmrouter.settings import ServiceSettings


class EdgeSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="EDGE_", extra="ignore", frozen=True)

    port: int = Field(default=8080, ge=0, le=65535)
    router_addr: str = "127.0.0.1:50053"
    # API keys the edge accepts, "key=tenant" pairs separated by commas (a bare key belongs to tenant
    # "default"), or one pair per line in api_keys_file. None configured: every caller is accepted.
    api_keys: str = ""
    api_keys_file: Path | None = None
    request_timeout_s: float = Field(default=120.0, gt=0)
    max_body_bytes: int = Field(default=8 * 1024 * 1024, gt=0)

    @field_validator("api_keys_file")
    @classmethod
    def _readable(cls, path: Path | None) -> Path | None:
        if path is not None and not path.is_file():
            raise ValueError(f"{path} is not a readable file")
        return path

    def key_tenants(self) -> dict[str, str]:
        text = self.api_keys.replace(",", "\n")
        if self.api_keys_file is not None:
            text += "\n" + self.api_keys_file.read_text()
        pairs = (line.strip().partition("=") for line in text.splitlines() if line.strip())
        return {key.strip(): (tenant.strip() or "default") for key, _, tenant in pairs}
