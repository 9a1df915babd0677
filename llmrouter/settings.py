"""Typed, environment-driven settings: one pydantic-settings class per service, validated at start."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, TypeVar

from pydantic import AfterValidator, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

# The checkout (or the image's working copy) holding config/ and artefacts/.
REPO_ROOT = Path(__file__).resolve().parent.parent

# A path setting: relative paths mean the same file whatever directory a service starts in.
RepoPath = Annotated[Path, AfterValidator(lambda path: path if path.is_absolute() else REPO_ROOT / path)]


class ServiceSettings(BaseSettings):
    """What every gRPC service has; each service subclasses it with its own env prefix."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535, description="gRPC port; 0 picks a free one")
    metrics_port: int | None = Field(default=None, ge=0, le=65535, description="Prometheus port; unset disables")
    log_level: str = Field(default="INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")
    grace_seconds: float = Field(default=10.0, ge=0, description="drain time for in-flight calls on SIGTERM")


S = TypeVar("S", bound=BaseSettings)


def load_settings(cls: type[S]) -> S:
    """Build settings from the environment; on bad values exit with one clear line per problem."""
    try:
        return cls()
    except ValidationError as exc:
        prefix = cls.model_config.get("env_prefix", "")
        lines = [f"invalid configuration for {cls.__name__}:"]
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"])
            lines.append(f"  {prefix}{field.upper()}: {err['msg']} (got {err.get('input')!r})")
        print("\n".join(lines), file=sys.stderr)
        raise SystemExit(2) from None
