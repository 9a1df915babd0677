from llmrouter.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CompleteRequest(_message.Message):
    __slots__ = ("messages", "tenant", "api_key", "model", "quality_target", "max_cost_usd", "max_latency_ms", "session_id", "max_tokens", "temperature", "request_id", "passthrough_json", "strong_share", "escalation", "buffer_stream", "api_key_id", "verifier_threshold", "quality_kept")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    QUALITY_TARGET_FIELD_NUMBER: _ClassVar[int]
    MAX_COST_USD_FIELD_NUMBER: _ClassVar[int]
    MAX_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PASSTHROUGH_JSON_FIELD_NUMBER: _ClassVar[int]
    STRONG_SHARE_FIELD_NUMBER: _ClassVar[int]
    ESCALATION_FIELD_NUMBER: _ClassVar[int]
    BUFFER_STREAM_FIELD_NUMBER: _ClassVar[int]
    API_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    VERIFIER_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    QUALITY_KEPT_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[_common_pb2.ChatMessage]
    tenant: str
    api_key: str
    model: str
    quality_target: float
    max_cost_usd: str
    max_latency_ms: int
    session_id: str
    max_tokens: int
    temperature: float
    request_id: str
    passthrough_json: str
    strong_share: float
    escalation: str
    buffer_stream: bool
    api_key_id: str
    verifier_threshold: float
    quality_kept: float
    def __init__(self, messages: _Optional[_Iterable[_Union[_common_pb2.ChatMessage, _Mapping]]] = ..., tenant: _Optional[str] = ..., api_key: _Optional[str] = ..., model: _Optional[str] = ..., quality_target: _Optional[float] = ..., max_cost_usd: _Optional[str] = ..., max_latency_ms: _Optional[int] = ..., session_id: _Optional[str] = ..., max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., request_id: _Optional[str] = ..., passthrough_json: _Optional[str] = ..., strong_share: _Optional[float] = ..., escalation: _Optional[str] = ..., buffer_stream: _Optional[bool] = ..., api_key_id: _Optional[str] = ..., verifier_threshold: _Optional[float] = ..., quality_kept: _Optional[float] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("model", "predicted_quality", "estimated_cost_usd", "eligible", "excluded_because")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_QUALITY_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_COST_USD_FIELD_NUMBER: _ClassVar[int]
    ELIGIBLE_FIELD_NUMBER: _ClassVar[int]
    EXCLUDED_BECAUSE_FIELD_NUMBER: _ClassVar[int]
    model: str
    predicted_quality: float
    estimated_cost_usd: str
    eligible: bool
    excluded_because: str
    def __init__(self, model: _Optional[str] = ..., predicted_quality: _Optional[float] = ..., estimated_cost_usd: _Optional[str] = ..., eligible: _Optional[bool] = ..., excluded_because: _Optional[str] = ...) -> None: ...

class Decision(_message.Message):
    __slots__ = ("model", "reason", "candidates", "quality_target", "classifier_version", "max_tokens_capped", "model_with_every_provider", "reason_with_every_provider", "session_affinity")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    QUALITY_TARGET_FIELD_NUMBER: _ClassVar[int]
    CLASSIFIER_VERSION_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_CAPPED_FIELD_NUMBER: _ClassVar[int]
    MODEL_WITH_EVERY_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    REASON_WITH_EVERY_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    SESSION_AFFINITY_FIELD_NUMBER: _ClassVar[int]
    model: str
    reason: str
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    quality_target: float
    classifier_version: str
    max_tokens_capped: int
    model_with_every_provider: str
    reason_with_every_provider: str
    session_affinity: bool
    def __init__(self, model: _Optional[str] = ..., reason: _Optional[str] = ..., candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., quality_target: _Optional[float] = ..., classifier_version: _Optional[str] = ..., max_tokens_capped: _Optional[int] = ..., model_with_every_provider: _Optional[str] = ..., reason_with_every_provider: _Optional[str] = ..., session_affinity: _Optional[bool] = ...) -> None: ...

class CompleteResponse(_message.Message):
    __slots__ = ("id", "content", "model", "provider", "usage", "cost_usd", "latency_ms", "decision", "cache_hit", "escalated", "retries", "finish_reason", "tool_calls_json", "escalation_signal", "logprobs_json", "refusal", "cost_pending")
    ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_FIELD_NUMBER: _ClassVar[int]
    ESCALATED_FIELD_NUMBER: _ClassVar[int]
    RETRIES_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALLS_JSON_FIELD_NUMBER: _ClassVar[int]
    ESCALATION_SIGNAL_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_JSON_FIELD_NUMBER: _ClassVar[int]
    REFUSAL_FIELD_NUMBER: _ClassVar[int]
    COST_PENDING_FIELD_NUMBER: _ClassVar[int]
    id: str
    content: str
    model: str
    provider: str
    usage: _common_pb2.Usage
    cost_usd: str
    latency_ms: int
    decision: Decision
    cache_hit: bool
    escalated: bool
    retries: int
    finish_reason: str
    tool_calls_json: str
    escalation_signal: str
    logprobs_json: str
    refusal: str
    cost_pending: bool
    def __init__(self, id: _Optional[str] = ..., content: _Optional[str] = ..., model: _Optional[str] = ..., provider: _Optional[str] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., cost_usd: _Optional[str] = ..., latency_ms: _Optional[int] = ..., decision: _Optional[_Union[Decision, _Mapping]] = ..., cache_hit: _Optional[bool] = ..., escalated: _Optional[bool] = ..., retries: _Optional[int] = ..., finish_reason: _Optional[str] = ..., tool_calls_json: _Optional[str] = ..., escalation_signal: _Optional[str] = ..., logprobs_json: _Optional[str] = ..., refusal: _Optional[str] = ..., cost_pending: _Optional[bool] = ...) -> None: ...

class CompleteChunk(_message.Message):
    __slots__ = ("decision", "delta", "final", "refusal_delta")
    DECISION_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    REFUSAL_DELTA_FIELD_NUMBER: _ClassVar[int]
    decision: Decision
    delta: str
    final: CompleteResponse
    refusal_delta: str
    def __init__(self, decision: _Optional[_Union[Decision, _Mapping]] = ..., delta: _Optional[str] = ..., final: _Optional[_Union[CompleteResponse, _Mapping]] = ..., refusal_delta: _Optional[str] = ...) -> None: ...

class SubmitLinesRequest(_message.Message):
    __slots__ = ("lines",)
    LINES_FIELD_NUMBER: _ClassVar[int]
    lines: _containers.RepeatedCompositeFieldContainer[CompleteRequest]
    def __init__(self, lines: _Optional[_Iterable[_Union[CompleteRequest, _Mapping]]] = ...) -> None: ...

class DeferredLine(_message.Message):
    __slots__ = ("request_id", "deferred", "model", "provider_batch_id", "error", "held_usd", "cost_pending")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DEFERRED_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    HELD_USD_FIELD_NUMBER: _ClassVar[int]
    COST_PENDING_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    deferred: bool
    model: str
    provider_batch_id: str
    error: str
    held_usd: str
    cost_pending: bool
    def __init__(self, request_id: _Optional[str] = ..., deferred: _Optional[bool] = ..., model: _Optional[str] = ..., provider_batch_id: _Optional[str] = ..., error: _Optional[str] = ..., held_usd: _Optional[str] = ..., cost_pending: _Optional[bool] = ...) -> None: ...

class SubmitLinesResponse(_message.Message):
    __slots__ = ("lines",)
    LINES_FIELD_NUMBER: _ClassVar[int]
    lines: _containers.RepeatedCompositeFieldContainer[DeferredLine]
    def __init__(self, lines: _Optional[_Iterable[_Union[DeferredLine, _Mapping]]] = ...) -> None: ...

class CollectBatchRequest(_message.Message):
    __slots__ = ("tenant", "api_key", "api_key_id", "model", "provider_batch_id", "request_ids", "reads_cost_pending")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    API_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_IDS_FIELD_NUMBER: _ClassVar[int]
    READS_COST_PENDING_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    api_key: str
    api_key_id: str
    model: str
    provider_batch_id: str
    request_ids: _containers.RepeatedScalarFieldContainer[str]
    reads_cost_pending: bool
    def __init__(self, tenant: _Optional[str] = ..., api_key: _Optional[str] = ..., api_key_id: _Optional[str] = ..., model: _Optional[str] = ..., provider_batch_id: _Optional[str] = ..., request_ids: _Optional[_Iterable[str]] = ..., reads_cost_pending: _Optional[bool] = ...) -> None: ...

class CollectedLine(_message.Message):
    __slots__ = ("request_id", "succeeded", "response", "error", "charged_usd", "cost_pending")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CHARGED_USD_FIELD_NUMBER: _ClassVar[int]
    COST_PENDING_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    succeeded: bool
    response: CompleteResponse
    error: str
    charged_usd: str
    cost_pending: bool
    def __init__(self, request_id: _Optional[str] = ..., succeeded: _Optional[bool] = ..., response: _Optional[_Union[CompleteResponse, _Mapping]] = ..., error: _Optional[str] = ..., charged_usd: _Optional[str] = ..., cost_pending: _Optional[bool] = ...) -> None: ...

class CollectBatchResponse(_message.Message):
    __slots__ = ("status", "ended", "lines")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ENDED_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    status: str
    ended: bool
    lines: _containers.RepeatedCompositeFieldContainer[CollectedLine]
    def __init__(self, status: _Optional[str] = ..., ended: _Optional[bool] = ..., lines: _Optional[_Iterable[_Union[CollectedLine, _Mapping]]] = ...) -> None: ...
