from llmrouter.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GenerateRequest(_message.Message):
    __slots__ = ("model", "messages", "max_tokens", "temperature", "request_id", "passthrough_json", "want_confidence", "retry_budget_usd", "tool_call_progress", "input_progress", "refusal_progress", "usage_final", "admitted_prices")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PASSTHROUGH_JSON_FIELD_NUMBER: _ClassVar[int]
    WANT_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    RETRY_BUDGET_USD_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    INPUT_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    REFUSAL_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FINAL_FIELD_NUMBER: _ClassVar[int]
    ADMITTED_PRICES_FIELD_NUMBER: _ClassVar[int]
    model: str
    messages: _containers.RepeatedCompositeFieldContainer[_common_pb2.ChatMessage]
    max_tokens: int
    temperature: float
    request_id: str
    passthrough_json: str
    want_confidence: bool
    retry_budget_usd: str
    tool_call_progress: bool
    input_progress: bool
    refusal_progress: bool
    usage_final: bool
    admitted_prices: _common_pb2.Prices
    def __init__(self, model: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[_common_pb2.ChatMessage, _Mapping]]] = ..., max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., request_id: _Optional[str] = ..., passthrough_json: _Optional[str] = ..., want_confidence: _Optional[bool] = ..., retry_budget_usd: _Optional[str] = ..., tool_call_progress: _Optional[bool] = ..., input_progress: _Optional[bool] = ..., refusal_progress: _Optional[bool] = ..., usage_final: _Optional[bool] = ..., admitted_prices: _Optional[_Union[_common_pb2.Prices, _Mapping]] = ...) -> None: ...

class CuedRequest(_message.Message):
    __slots__ = ("request", "send")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    SEND_FIELD_NUMBER: _ClassVar[int]
    request: GenerateRequest
    send: bool
    def __init__(self, request: _Optional[_Union[GenerateRequest, _Mapping]] = ..., send: _Optional[bool] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("content", "usage", "cost_usd", "finish_reason", "model", "provider", "retries", "latency_ms", "tool_calls_json", "mean_logprob", "logprobs_json", "refusal")
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    RETRIES_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALLS_JSON_FIELD_NUMBER: _ClassVar[int]
    MEAN_LOGPROB_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_JSON_FIELD_NUMBER: _ClassVar[int]
    REFUSAL_FIELD_NUMBER: _ClassVar[int]
    content: str
    usage: _common_pb2.Usage
    cost_usd: str
    finish_reason: str
    model: str
    provider: str
    retries: int
    latency_ms: int
    tool_calls_json: str
    mean_logprob: float
    logprobs_json: str
    refusal: str
    def __init__(self, content: _Optional[str] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., cost_usd: _Optional[str] = ..., finish_reason: _Optional[str] = ..., model: _Optional[str] = ..., provider: _Optional[str] = ..., retries: _Optional[int] = ..., latency_ms: _Optional[int] = ..., tool_calls_json: _Optional[str] = ..., mean_logprob: _Optional[float] = ..., logprobs_json: _Optional[str] = ..., refusal: _Optional[str] = ...) -> None: ...

class GenerateChunk(_message.Message):
    __slots__ = ("delta", "final", "consumed", "tool_call_tokens", "input", "ready_to_send", "refusal_delta")
    DELTA_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    CONSUMED_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    READY_TO_SEND_FIELD_NUMBER: _ClassVar[int]
    REFUSAL_DELTA_FIELD_NUMBER: _ClassVar[int]
    delta: str
    final: GenerateResponse
    consumed: GenerateResponse
    tool_call_tokens: int
    input: _common_pb2.Usage
    ready_to_send: bool
    refusal_delta: str
    def __init__(self, delta: _Optional[str] = ..., final: _Optional[_Union[GenerateResponse, _Mapping]] = ..., consumed: _Optional[_Union[GenerateResponse, _Mapping]] = ..., tool_call_tokens: _Optional[int] = ..., input: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., ready_to_send: _Optional[bool] = ..., refusal_delta: _Optional[str] = ...) -> None: ...

class SubmitBatchRequest(_message.Message):
    __slots__ = ("model", "requests")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    model: str
    requests: _containers.RepeatedCompositeFieldContainer[GenerateRequest]
    def __init__(self, model: _Optional[str] = ..., requests: _Optional[_Iterable[_Union[GenerateRequest, _Mapping]]] = ...) -> None: ...

class SubmitBatchResponse(_message.Message):
    __slots__ = ("batch_id",)
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    def __init__(self, batch_id: _Optional[str] = ...) -> None: ...

class PollBatchRequest(_message.Message):
    __slots__ = ("model", "batch_id", "request_ids", "partial")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_IDS_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    model: str
    batch_id: str
    request_ids: _containers.RepeatedScalarFieldContainer[str]
    partial: bool
    def __init__(self, model: _Optional[str] = ..., batch_id: _Optional[str] = ..., request_ids: _Optional[_Iterable[str]] = ..., partial: _Optional[bool] = ...) -> None: ...

class BatchLineResult(_message.Message):
    __slots__ = ("request_id", "succeeded", "response", "error")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    succeeded: bool
    response: GenerateResponse
    error: str
    def __init__(self, request_id: _Optional[str] = ..., succeeded: _Optional[bool] = ..., response: _Optional[_Union[GenerateResponse, _Mapping]] = ..., error: _Optional[str] = ...) -> None: ...

class PollBatchResponse(_message.Message):
    __slots__ = ("status", "ended", "results", "unread_ids")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ENDED_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    UNREAD_IDS_FIELD_NUMBER: _ClassVar[int]
    status: str
    ended: bool
    results: _containers.RepeatedCompositeFieldContainer[BatchLineResult]
    unread_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, status: _Optional[str] = ..., ended: _Optional[bool] = ..., results: _Optional[_Iterable[_Union[BatchLineResult, _Mapping]]] = ..., unread_ids: _Optional[_Iterable[str]] = ...) -> None: ...
