"""Typed, environment-driven settings: one pydantic-settings class per service, validated at start."""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args

from pydantic import (
    AfterValidator,
    Field,
    Secret,
    SecretBytes,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from llmrouter.auth import parse_callers, parse_tokens
from llmrouter.overload import GRPC_PENDING_CALLS
from llmrouter.setting_entries import setting_entries

# The checkout (or the image's working copy) holding config/ and artefacts/.
REPO_ROOT = Path(__file__).resolve().parent.parent

# A path setting: relative paths mean the same file whatever directory a service starts in.
RepoPath = Annotated[Path, AfterValidator(lambda path: path if path.is_absolute() else REPO_ROOT / path)]

# A kubernetes.io/tls Secret's files (cert-manager writes the same three).
TLS_FILES = ("tls.crt", "tls.key", "ca.crt")


class ServiceSettings(BaseSettings):
    """What every service has; each service subclasses it with its own env prefix."""

    # hide_input_in_errors: a ValidationError shown as raised (a traceback) quotes no input, where a rule across
    # settings would quote them all, secrets and Redis URLs with their passwords; load_settings quotes the safe ones.
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", frozen=True, hide_input_in_errors=True)

    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535, description="gRPC port; 0 picks a free one")
    # Each service defaults to its documented port (docs/conventions.md); 0 disables.
    metrics_port: int = Field(default=0, ge=0, le=65535, description="Prometheus port; 0 disables")
    log_level: str = Field(default="INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")
    grace_seconds: float = Field(default=10.0, ge=0, description="drain time for in-flight calls on SIGTERM")
    # This service's certificate: served by a gRPC server, presented when calling other services (mTLS).
    tls_dir: Path | None = Field(default=None, description="directory with tls.crt, tls.key, ca.crt")
    # Bearer token presented to the services this one calls, for servers in token mode.
    call_token: SecretStr | None = None

    @field_validator("tls_dir")
    @classmethod
    def _tls_files(cls, path: Path | None) -> Path | None:
        missing = [name for name in TLS_FILES if path is not None and not (path / name).is_file()]
        if missing:
            raise ValueError(f"{path} lacks {', '.join(missing)}")
        return path


class GrpcServiceSettings(ServiceSettings):
    """A gRPC server's settings: who may call it (see docs/conventions.md, Authentication)."""

    # mtls: client certificates signed by tls_dir/ca.crt, identity = subject CN. token: a bearer token from
    # auth_tokens (over TLS when tls_dir is set). none: no authentication, every caller fully trusted.
    auth: Literal["mtls", "token", "none"] = "mtls"
    auth_none_allow_remote: bool = Field(default=False, description="let auth=none listen beyond loopback")
    # "sha256-hex-of-token=identity" pairs, comma-separated, or one per line in auth_tokens_file; `#` starts a comment.
    auth_tokens: str = ""
    auth_tokens_file: Path | None = None
    # Identities allowed to call: "name" (pays as tenant "name"), "name=tenant", or "name=*" (may act for
    # any tenant named in the request). Each service sets its default.
    callers: str = ""
    # A plaintext port serving only gRPC health checking (for kubelet probes, which do not speak mTLS).
    health_port: int | None = Field(default=None, ge=0, le=65535)
    # Calls served at once (streams until they end); past it a call is refused OVERLOADED before any work
    # (llmrouter.overload). Below gRPC's queue of calls waiting for a handler, past which gRPC cancels them unexplained.
    max_inflight_calls: int = Field(default=512, gt=0, lt=GRPC_PENDING_CALLS)

    @field_validator("auth_tokens_file")
    @classmethod
    def _readable(cls, path: Path | None) -> Path | None:
        if path is not None and not path.is_file():
            raise ValueError(f"{path} is not a readable file")
        return path

    @field_validator("callers")
    @classmethod
    def _callers(cls, text: str) -> str:
        parse_callers(text)
        return text

    @model_validator(mode="after")
    def _auth_configured(self) -> GrpcServiceSettings:
        parse_tokens(self.token_entries())
        p = self.model_config.get("env_prefix", "")  # the variables named as a user sets them
        if self.auth == "mtls" and self.tls_dir is None:
            raise ValueError(
                f"{p}AUTH=mtls needs {p}TLS_DIR (or set {p}AUTH=token with {p}AUTH_TOKENS, or {p}AUTH=none)"
            )
        if self.auth == "token" and not self.token_entries():
            raise ValueError(f"{p}AUTH=token needs {p}AUTH_TOKENS or {p}AUTH_TOKENS_FILE")
        if self.auth == "none" and not is_loopback(self.host) and not self.auth_none_allow_remote:
            raise ValueError(
                f"{p}AUTH=none on {self.host}: serve on loopback ({p}HOST), or set {p}AUTH_NONE_ALLOW_REMOTE=true"
            )
        return self

    def token_entries(self) -> list[tuple[str, str]]:
        """(where, entry): AUTH_TOKENS' entries, then the file's, comments and blank lines dropped as in the edge's key
        file, each placed as an operator finds it (the file by its own line numbers)."""
        prefix = self.model_config.get("env_prefix", "")
        return setting_entries(f"{prefix}AUTH_TOKENS", self.auth_tokens, self.auth_tokens_file)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


S = TypeVar("S", bound=BaseSettings)
SECRET_WORDS = {"key", "keys", "secret", "token", "tokens", "password"}


def load_settings(cls: type[S], name_check: bool = True, **values: Any) -> S:
    """Build settings from the environment (`values` given over it); on bad values exit with one clear line per
    problem. A service's (name_check) warns of each variable of its prefix that names no setting of it."""
    try:
        settings = cls(**values)
    except ValidationError as exc:
        prefix = cls.model_config.get("env_prefix", "")
        lines = [f"invalid configuration for {cls.__name__}:"]
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"])
            said = err["msg"].removeprefix("Value error, ")  # pydantic's word for a validator's own message
            if not field:  # a rule across settings: its input is all of them, secrets included
                lines.append(f"  {prefix}*: {said}")
            elif is_secret(cls, field) or not given(cls, field.split(".")[0], values):
                # Never echo a credential, however malformed; nor a default, refused for another setting's value.
                lines.append(f"  {prefix}{field.upper()}: {said}")
            else:
                lines.append(f"  {prefix}{field.upper()}: {said} (got {err.get('input')!r})")
        print("\n".join(lines), file=sys.stderr)
        raise SystemExit(2) from None
    except SettingsError as exc:  # a JSON setting that is no JSON, refused before any validation: its value unquoted
        prefix = cls.model_config.get("env_prefix", "")
        named = re.search(r'field "(\w+)"', str(exc))
        name = f"{prefix}{named.group(1).upper()}" if named else f"{prefix}*"
        said = f"not valid JSON ({exc.__cause__})" if exc.__cause__ else str(exc)
        print(f"invalid configuration for {cls.__name__}:\n  {name}: {said}", file=sys.stderr)
        raise SystemExit(2) from None
    if name_check and issubclass(cls, ServiceSettings):
        for warning in unknown_settings(cls, os.environ):
            print(warning, file=sys.stderr)
    return settings


def given(cls: type[BaseSettings], field: str, values: Mapping[str, Any]) -> bool:
    """Whether a setting was given (in the environment, as pydantic-settings reads it: any case, or in `values`) rather
    than left to its default: '(got False)' of a variable never set reads as a value the user gave."""
    variable = f"{cls.model_config.get('env_prefix', '')}{field}".upper()
    return field in values or any(name.upper() == variable for name in os.environ)


def unknown_settings(cls: type[BaseSettings], environ: Mapping[str, str]) -> list[str]:
    """A line for each variable of the class's prefix that is none of its settings: misspelt
    (ROUTER_TENANT_BUDGET_UDS), it was ignored without a word and its default served, no budget among them."""
    prefix = cls.model_config.get("env_prefix", "")
    known = sorted(f"{prefix}{field}".upper() for field in cls.model_fields)
    lines = []
    for name in sorted(environ):
        if prefix and name.upper().startswith(prefix) and name.upper() not in known:
            close = difflib.get_close_matches(name.upper(), known, n=1, cutoff=0.8)
            guess = f"; did you mean {close[0]}?" if close else ""
            lines.append(f"warning: {name} is no setting of {cls.__name__} and is ignored{guess}")
    return lines


def is_secret(cls: type[BaseSettings], field: str) -> bool:
    """Whether a setting (or an entry of one, `name.key`) holds a credential: by its type (SecretStr, a Redis URL), or
    by its name for one typed as plain text."""
    info = cls.model_fields.get(field.split(".")[0])
    return _secret_type(info.annotation if info else None) or bool(SECRET_WORDS & set(field.lower().split("_")))


def _secret_type(annotation: Any) -> bool:
    if isinstance(annotation, type) and issubclass(annotation, (SecretStr, SecretBytes, Secret)):
        return True
    return any(_secret_type(arg) for arg in get_args(annotation))
