"""The model registry: which models exist, who serves them, what they cost and how good they are expected to
be. One YAML file, shared by the router (policy) and the providers service (gateways), reloaded in place when
it changes (LiveRegistry)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import yaml
from prometheus_client import Counter, Gauge
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from llmrouter import parameters
from llmrouter.deadlines import MIN_SEND_S, MIN_TOTAL_TIMEOUT_S
from llmrouter.settings import REPO_ROOT
from llmrouter.tasks import every
from llmrouter.tasks import stop as stop_task
from llmrouter.v1 import common_pb2
from llmrouter.validation import AmountError, parse_amount

if TYPE_CHECKING:
    from llmrouter.tokens import Encoding

DEFAULT_REGISTRY = REPO_ROOT / "config" / "models.yaml"
MTOK = Decimal(1_000_000)

# How a model's billed input is bounded before the call: counted with its own tokenizer when it is one bundled
# here (OpenAI's), else by the UTF-8 bytes of the prompt plus its chat template (llmrouter/byte_bound.py).
Tokenizer = Literal["cl100k_base", "o200k_base", "utf8_bytes"]
UTF8_BYTES: Tokenizer = "utf8_bytes"
# Provider kinds whose Batch API the providers service speaks: a model of one with a batch price has its batch
# lines sent through it (OpenAI's /v1/files and /v1/batches, as Groq and Together also serve it; Anthropic's
# /v1/messages/batches).
BATCH_KINDS = frozenset({"openai", "anthropic"})
# Which OpenAI response_format types a model of each provider kind honours unless its entry says otherwise: an
# OpenAI-compatible API takes both (a provider that serves only some models so sets the others false); the
# Anthropic and local gateways have nothing to send them as, so their models honour neither, and cannot be set to.
FORMAT_DEFAULTS = {"openai": True, "anthropic": False, "local": False}
# The response_format types a model must honour, each with the registry field that says it does.
FORMAT_FIELDS = {"json_object": "json_mode", "json_schema": "structured_outputs"}
# Capabilities only the openai kind's gateway has, each with why the anthropic and local gateways cannot claim it.
OPENAI_ONLY = {"logprobs": "returns no log-probabilities", "logit_bias": "drops logit_bias"}
# Whether a model of each provider kind can be sent a tool call whose arguments are no JSON object (`{`, `[1,2]`):
# OpenAI's gateway sends them on as the string they are, the local one sends no tool calls; Anthropic's Messages API
# takes them only as an object (a tool_use block's input).
RAW_TOOL_ARGUMENTS = {"openai": True, "anthropic": False, "local": True}
# The highest temperature each kind's API takes (Anthropic's Messages API: 0..1, a 400 above), and whether it takes a
# stop sequence of only whitespace (Anthropic's refuses one): a model's entry may lower these, never raise them.
MAX_TEMPERATURE = {"openai": 2.0, "anthropic": 1.0, "local": 2.0}
BLANK_STOP = {"openai": True, "anthropic": False, "local": True}

log = logging.getLogger("llmrouter.registry")
RELOADS = Counter(
    "llmrouter_registry_reloads_total", "Changes of the registry file, by outcome (ok, invalid)", ["service", "outcome"]
)
VALID = Gauge(
    "llmrouter_registry_valid",
    "1 when the registry file in place is the one in force; 0 when it is invalid and the previous one is kept",
    ["service"],
)


class UnreadableKey(ValueError):
    """A provider's key file that holds no key as read."""


# Far past any provider's key: a file larger is no key (a symlink led astray), and is not read whole, on the event loop,
# at every registry check.
MAX_KEY_FILE_BYTES = 64 << 10


def _key_in(path: Path) -> str:
    try:
        with path.open("rb") as file:
            read = file.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise UnreadableKey(f"{path}: {exc.strerror}") from None
    if len(read) > MAX_KEY_FILE_BYTES:
        raise UnreadableKey(f"{path} is larger than {MAX_KEY_FILE_BYTES >> 10} KiB")
    try:
        key = read.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise UnreadableKey(f"{path} is not UTF-8 text") from None  # the error itself would quote a byte of it
    if not key or not key.isascii() or not key.isprintable():
        raise UnreadableKey(f"{path} is empty or holds more than printable ASCII")
    return key


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
    # A call its caller's own deadline ended (before total_timeout_s) is a failure only once its upstream had this
    # long to answer: one tenant's short deadlines must not open the circuit and send every caller to dearer
    # fallbacks, yet an upstream silent this long, to callers who never wait read_timeout_s, must still open it.
    breaker_min_wait_s: float = Field(default=10.0, gt=0)
    # An OpenAI-compatible upstream that returns token log-probabilities, in OpenAI's shape, when asked
    # (`logprobs: true`): the default of its models' own `logprobs` (ModelSpec), which alone decides. Off by default:
    # some upstreams refuse the field (Groq: a 400), others answer in another shape (Together).
    logprobs: bool = False
    # An OpenAI-compatible upstream that applies logit_bias (token id to bias) as OpenAI does: the default of its
    # models' own `logit_bias` (ModelSpec). Left out: true for the openai kind, whose field it is; an upstream that
    # refuses it says false (Groq: a 400). Never true for the anthropic and local kinds, whose gateways drop it.
    logit_bias: bool | None = None
    # An OpenAI-compatible upstream that takes a message's `name` (the participant who wrote it). False (Groq refuses
    # it with a 400): the openai kind's gateway leaves it out of every message it sends there. Left out rather than the
    # provider excluded from requests that name their messages: a name only tells apart participants of one role, which
    # few answers turn on, while many clients name every message (agent frameworks), whose requests would then never
    # reach the provider's cheaper models. LiteLLM drops it the same way for providers that refuse it (Mistral), as the
    # anthropic gateway always has (the Messages API has no name); the local gateway sends none either.
    message_names: bool = True

    @field_validator("total_timeout_s")
    @classmethod
    def _time_to_send(cls, total_timeout_s: float) -> float:
        if total_timeout_s < MIN_TOTAL_TIMEOUT_S:
            raise ValueError(
                f"total_timeout_s {total_timeout_s} s is below {MIN_TOTAL_TIMEOUT_S} s, the least accepted: its calls "
                f"could never be made, the providers refusing unsent an attempt left less than {MIN_SEND_S} s to send "
                "once the router gave its word (llmrouter/deadlines.py)"
            )
        return total_timeout_s

    def api_key(self, keys_dir: Path | None = None) -> str:
        """The key as its file (else the environment) holds it now; "" when there is none. A file there that holds no
        key (unreadable, empty, not printable ASCII: a file written in place reads so for a moment) raises
        UnreadableKey, naming the file, never what it holds."""
        files = [Path(self.api_key_file)] if self.api_key_file else []
        if keys_dir is not None and self.api_key_env:
            files.append(keys_dir / self.api_key_env)
        for path in files:
            if path.is_file():
                return _key_in(path)
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
    # The provider's Batch API price (both or neither): batch lines sent through a provider's Batch API are
    # charged this; lines served by the realtime API, the realtime price (README, Batches).
    batch_input_usd_per_mtok: Decimal | None = Field(default=None, ge=0)
    batch_output_usd_per_mtok: Decimal | None = Field(default=None, ge=0)
    # The provider's prompt-cache prices: an input token read from its cache (OpenAI's cached_tokens, Anthropic's cache
    # reads) and one written to it (Anthropic's cache writes, dearer than an uncached token). Left out: the input price.
    # Not at the batch price: a batch line's cached tokens are priced as its other input (README, Prompt caching).
    cached_input_usd_per_mtok: Decimal | None = Field(default=None, ge=0)
    cache_write_usd_per_mtok: Decimal | None = Field(default=None, ge=0)
    context_window: int = Field(gt=0)
    max_output_tokens: int = Field(default=4096, gt=0)
    tokenizer: Tokenizer = UTF8_BYTES  # a model of unknown tokenizer is bounded by bytes, which holds for any
    latency_slo_ms: int = Field(default=30_000, gt=0)
    tools: bool = True  # can call tools; a request offering tools is routed only to models that can
    # Guarantees the answer's shape asked by response_format: json_mode for {"type": "json_object"} (valid JSON),
    # structured_outputs for {"type": "json_schema"} (JSON matching the caller's schema). A request asking for one
    # is routed only to models that honour it. Left out: as its provider's kind serves it (FORMAT_DEFAULTS).
    json_mode: bool | None = None
    structured_outputs: bool | None = None
    # Returns token log-probabilities in OpenAI's shape (choices[0].logprobs.content) when asked: a caller's
    # logprobs / top_logprobs is routed only to models that do, and the router's own low-confidence signal is asked
    # only of them. Left out: its provider's `logprobs`; never true for the anthropic and local kinds.
    logprobs: bool | None = None
    # Applies logit_bias: a request carrying one is routed only to models that do (and must name its model, since
    # the keys are token ids of that model's tokenizer). Left out: its provider's `logit_bias`.
    logit_bias: bool | None = None
    # Can be sent a conversation whose tool calls' arguments are no JSON object: such a request is routed only to
    # models that can. Left out: as its provider's kind sends them (RAW_TOOL_ARGUMENTS); never true for anthropic.
    raw_tool_arguments: bool | None = None
    # The highest sampling temperature its API accepts: a request asking for more is routed only to models that take
    # it, never sent where it would fail and be retried or fallen back from for nothing. Left out: its provider kind's
    # (MAX_TEMPERATURE: 2, OpenAI's bound, past which requests are refused (llmrouter/validation.py); Anthropic 1).
    max_temperature: float = Field(default=2.0, ge=0, le=2)
    # Takes a stop sequence of only whitespace ("\n"). A request holding one is routed only to models that take it:
    # dropping the sequence would change the answer. Left out: its provider kind's (BLANK_STOP: false for Anthropic).
    blank_stop: bool = True
    # Quality comes from the classifier's prediction for `quality_from` (a model it was trained on),
    # or, for a model it cannot predict, from the fixed prior `quality_prior`.
    quality_from: str = ""
    quality_prior: float | None = Field(default=None, ge=0, le=1)

    @field_validator(
        "input_usd_per_mtok", "output_usd_per_mtok", "cached_input_usd_per_mtok", "cache_write_usd_per_mtok"
    )
    @classmethod
    def _an_amount(cls, usd_per_mtok: Decimal | None) -> Decimal | None:
        # Told to the providers as the prices a stream was admitted at (prices()), which they refuse unless an amount:
        # past that form, every stream to the model would be refused, INVALID_ARGUMENT.
        if usd_per_mtok is not None:
            try:
                parse_amount(_plain_price(usd_per_mtok))
            except AmountError as exc:
                raise ValueError(f"the price {exc}") from None
        return usd_per_mtok

    @model_validator(mode="after")
    def _batch_price_whole(self) -> ModelSpec:
        if (self.batch_input_usd_per_mtok is None) != (self.batch_output_usd_per_mtok is None):
            raise ValueError(f"model {self.name!r}: give both batch prices or neither")
        # A batch line is routed within max_cost_usd at the realtime price and admitted, its max_tokens capped, at the
        # batch price: a dearer one could leave it eligible with a cap paying for no token (sent max_tokens 0, which
        # the gateways read as none). Batch APIs are discounts; a batch price above the realtime one is a mistake.
        for batch, realtime in (
            (self.batch_input_usd_per_mtok, "input_usd_per_mtok"),
            (self.batch_output_usd_per_mtok, "output_usd_per_mtok"),
        ):
            if batch is not None and batch > getattr(self, realtime):
                raise ValueError(
                    f"model {self.name!r}: batch_{realtime} {batch} is above its {realtime} {getattr(self, realtime)}"
                    " (a Batch API price is no dearer than the realtime one)"
                )
        return self

    @property
    def upstream_name(self) -> str:
        return self.upstream or self.name

    def honours(self, response_format: str) -> bool:
        """Whether the model guarantees an answer of this response_format type ('text', or none, always)."""
        field = FORMAT_FIELDS.get(response_format)
        return field is None or getattr(self, field) is True

    def info(self, kind: str) -> common_pb2.ModelInfo:
        """The model as callers see it (ListModels), served by a provider of this kind."""
        return common_pb2.ModelInfo(
            name=self.name,
            provider=self.provider,
            tier=self.tier,
            input_usd_per_mtok=str(self.input_usd_per_mtok),
            output_usd_per_mtok=str(self.output_usd_per_mtok),
            context_window=self.context_window,
            latency_slo_ms=self.latency_slo_ms,
            batch_input_usd_per_mtok=_price(self.batch_input_usd_per_mtok),
            batch_output_usd_per_mtok=_price(self.batch_output_usd_per_mtok),
            cached_input_usd_per_mtok=_price(self.cached_input_usd_per_mtok),
            cache_write_usd_per_mtok=_price(self.cache_write_usd_per_mtok),
            supported_parameters=parameters.for_model(self, kind),
        )

    def prices(self) -> common_pb2.Prices:
        """The model's prices, as a caller that admitted a request at them tells the providers service."""
        return common_pb2.Prices(
            input_usd_per_mtok=format(self.input_usd_per_mtok, "f"),
            output_usd_per_mtok=format(self.output_usd_per_mtok, "f"),
            cached_input_usd_per_mtok=_plain_price(self.cached_input_usd_per_mtok),
            cache_write_usd_per_mtok=_plain_price(self.cache_write_usd_per_mtok),
        )

    def at_batch_price(self) -> ModelSpec | None:
        """The model priced as its provider's Batch API bills it; None without a batch price."""
        if self.batch_input_usd_per_mtok is None or self.batch_output_usd_per_mtok is None:
            return None
        batch_input, batch_output = self.batch_input_usd_per_mtok, self.batch_output_usd_per_mtok
        return self.model_copy(
            update={
                "input_usd_per_mtok": batch_input,
                "output_usd_per_mtok": batch_output,
                "cached_input_usd_per_mtok": None,
                "cache_write_usd_per_mtok": None,
            }
        )

    @property
    def cached_input_price(self) -> Decimal:
        """USD per 1M input tokens read from the provider's prompt cache."""
        cached = self.cached_input_usd_per_mtok
        return self.input_usd_per_mtok if cached is None else cached

    @property
    def cache_write_price(self) -> Decimal:
        """USD per 1M input tokens written to the provider's prompt cache."""
        written = self.cache_write_usd_per_mtok
        return self.input_usd_per_mtok if written is None else written

    @property
    def worst_input_price(self) -> Decimal:
        """The most one input token can cost (USD per 1M): what a hold prices every input token at, since any of them
        may turn out a cache write."""
        return max(self.input_usd_per_mtok, self.cached_input_price, self.cache_write_price)

    def cost_usd(
        self, input_tokens: int, output_tokens: int, cached_input_tokens: int = 0, cache_write_input_tokens: int = 0
    ) -> Decimal:
        """Exact cost: Decimal arithmetic on prices per 1M tokens, never a float. The cached and the written tokens are
        part of input_tokens, each at its own price; counts past input_tokens are priced only as far as it goes."""
        written = max(0, min(cache_write_input_tokens, input_tokens))
        cached = max(0, min(cached_input_tokens, input_tokens - written))
        uncached = input_tokens - written - cached
        input_usd = self.input_usd_per_mtok * uncached + self.cached_input_price * cached
        input_usd += self.cache_write_price * written
        return (input_usd + self.output_usd_per_mtok * output_tokens) / MTOK

    def usage_cost_usd(self, usage: common_pb2.Usage) -> Decimal:
        """The exact cost of a generation's usage."""
        return self.cost_usd(
            usage.input_tokens, usage.output_tokens, usage.cached_input_tokens, usage.cache_write_input_tokens
        )

    def worst_cost_usd(self, input_tokens: int, output_tokens: int) -> Decimal:
        """The most these tokens can cost, whichever input tokens the provider reads from or writes to its cache."""
        return (self.worst_input_price * input_tokens + self.output_usd_per_mtok * output_tokens) / MTOK

    @property
    def estimating_encoding(self) -> Encoding:
        """The tokenizer a count no upstream gave is estimated with (a stream cut before its usage): the model's own
        where it is bundled (OpenAI's), else cl100k_base, as LiteLLM does for models whose tokenizer it lacks."""
        return "o200k_base" if self.tokenizer == "o200k_base" else "cl100k_base"


def _price(usd_per_mtok: Decimal | None) -> str:
    return "" if usd_per_mtok is None else str(usd_per_mtok)


def _plain_price(usd_per_mtok: Decimal | None) -> str:
    """A price in plain notation (never "1E-7", which is no amount a caller may write), empty for none."""
    return "" if usd_per_mtok is None else format(usd_per_mtok, "f")


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
        # Each model's response_format, logprobs, logit_bias and raw tool arguments support made explicit, from its
        # provider where its entry is silent.
        object.__setattr__(self, "models", [self._with_capabilities(m) for m in self.models])
        return self

    def _with_capabilities(self, model: ModelSpec) -> ModelSpec:
        provider = self.providers[model.provider]
        kind = provider.kind
        served = FORMAT_DEFAULTS[kind]
        update: dict[str, bool | float] = {}
        provider_logit_bias = kind == "openai" if provider.logit_bias is None else provider.logit_bias
        inherited = {"logprobs": provider.logprobs, "logit_bias": provider_logit_bias}
        for field, default in inherited.items():
            value = default if getattr(model, field) is None else getattr(model, field)
            if value and kind != "openai":
                raise ValueError(
                    f"model {model.name!r}: {field} cannot be true for a provider of kind {kind!r}, "
                    f"whose gateway {OPENAI_ONLY[field]}"
                )
            if getattr(model, field) is None:
                update[field] = value
        for field in FORMAT_FIELDS.values():
            if getattr(model, field) is None:
                update[field] = served
            elif getattr(model, field) and not served:
                raise ValueError(
                    f"model {model.name!r}: {field} cannot be true for a provider of kind {kind!r}, "
                    "whose gateway has no way to send response_format"
                )
        if "max_temperature" not in model.model_fields_set:
            update["max_temperature"] = MAX_TEMPERATURE[kind]
        elif model.max_temperature > MAX_TEMPERATURE[kind]:
            raise ValueError(
                f"model {model.name!r}: max_temperature cannot exceed {MAX_TEMPERATURE[kind]} for a provider of kind "
                f"{kind!r}, whose API refuses a higher temperature"
            )
        if "blank_stop" not in model.model_fields_set:
            update["blank_stop"] = BLANK_STOP[kind]
        elif model.blank_stop and not BLANK_STOP[kind]:
            raise ValueError(
                f"model {model.name!r}: blank_stop cannot be true for a provider of kind {kind!r}, "
                "whose API refuses a stop sequence of only whitespace"
            )
        if model.raw_tool_arguments is None:
            update["raw_tool_arguments"] = RAW_TOOL_ARGUMENTS[kind]
        elif model.raw_tool_arguments and not RAW_TOOL_ARGUMENTS[kind]:
            raise ValueError(
                f"model {model.name!r}: raw_tool_arguments cannot be true for a provider of kind {kind!r}, "
                "whose API takes a tool call's arguments only as a JSON object"
            )
        return model.model_copy(update=update) if update else model

    @property
    def current(self) -> Registry:
        """A registry that never changes is its own snapshot (as LiveRegistry.current gives one)."""
        return self

    def get(self, name: str) -> ModelSpec | None:
        return next((m for m in self.models if m.name == name), None)

    def info(self, model: ModelSpec) -> common_pb2.ModelInfo:
        """The model as callers see it (ListModels): its supported parameters depend on its provider's gateway."""
        return model.info(self.providers[model.provider].kind)

    def batch_priced(self, model: ModelSpec) -> ModelSpec | None:
        """The model at its batch price when its provider has a Batch API spoken here; None otherwise."""
        provider = self.providers.get(model.provider)
        return model.at_batch_price() if provider is not None and provider.kind in BATCH_KINDS else None

    def tier_rank(self, model: ModelSpec) -> int:
        return self.tiers.index(model.tier)


def load_registry(path: str | Path | None = None) -> Registry:
    path = Path(path) if path else DEFAULT_REGISTRY
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read model registry {path}: {exc}") from exc
    return parse_registry(text, path)


def parse_registry(text: bytes, path: Path) -> Registry:
    """A registry from the bytes of its file; ValueError (pydantic's included) says what is wrong."""
    try:
        raw = yaml.safe_load(text)
        return Registry.model_validate(raw)
    except yaml.YAMLError as exc:
        raise ValueError(f"cannot read model registry {path}: {exc}") from exc
    except RecursionError:  # brackets nested thousands deep: no registry, and no error to end the file's watch
        raise ValueError(f"cannot read model registry {path}: nested too deeply") from None


class RegistrySource(Protocol):
    """A fixed Registry or a LiveRegistry: where the registry in force is read, once per request."""

    @property
    def current(self) -> Registry: ...


class LiveRegistry:
    """The registry in force, reloaded when its file changes. The file's content is compared, so every kind of
    update is seen (a mounted ConfigMap changes by an atomic symlink swap). A new version is validated whole and
    swapped in at once; an invalid one is logged and counted (llmrouter_registry_valid drops to 0, an alert
    fires) while the previous registry stays in force. Callers read `current` once per request and keep that
    snapshot, so a request is priced with the registry it was admitted with."""

    def __init__(
        self,
        path: Path,
        service: str,
        interval_s: float = 5.0,
        on_change: Callable[[Registry], Awaitable[None]] | None = None,
        also_changed: Callable[[], bool] | None = None,
    ) -> None:
        self.path, self.service, self.interval_s, self.on_change = path, service, interval_s, on_change
        # Another input of the service's, looked at as often as the file: on_change is called when it changed too.
        self.also_changed = also_changed
        text = self._read()
        if text is None:
            raise ValueError(f"cannot read model registry {path}")
        self._current = parse_registry(text, path)
        self._seen = hashlib.sha256(text).digest()
        self._task: asyncio.Task[None] | None = None
        VALID.labels(service).set(1)

    @property
    def current(self) -> Registry:
        return self._current

    def check(self) -> bool:
        """Look at the file once: True when a new, valid registry is now in force."""
        text = self._read()
        digest = hashlib.sha256(text if text is not None else b"\0unreadable").digest()
        if digest == self._seen:
            return False
        self._seen = digest
        try:
            if text is None:
                raise ValueError(f"cannot read model registry {self.path}")
            registry = parse_registry(text, self.path)
        except ValueError as exc:
            RELOADS.labels(self.service, "invalid").inc()
            VALID.labels(self.service).set(0)
            log.error("new registry is invalid; the previous one stays in force", extra={"error": str(exc)})
            return False
        self._current = registry
        RELOADS.labels(self.service, "ok").inc()
        VALID.labels(self.service).set(1)
        log.info("registry reloaded", extra={"path": str(self.path), "models": len(registry.models)})
        return True

    def start(self) -> None:
        # The service keeps serving with what it has when a round fails; the providers' key files are read again
        # only from here, so no error may end the watch.
        watch = every(self.interval_s, self._round, log, "applying the new registry failed")
        self._task = asyncio.get_running_loop().create_task(watch)

    async def close(self) -> None:
        if self._task is not None:
            await stop_task(self._task)

    async def _round(self) -> None:
        changed = self.check()
        if self.on_change is not None and (changed or (self.also_changed is not None and self.also_changed())):
            await self.on_change(self._current)

    def _read(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except OSError:
            return None
