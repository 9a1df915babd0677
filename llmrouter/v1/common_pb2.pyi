from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ChatMessage(_message.Message):
    __slots__ = ("role", "content", "name", "tool_call_id", "tool_calls_json")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_ID_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALLS_JSON_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    name: str
    tool_call_id: str
    tool_calls_json: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ..., name: _Optional[str] = ..., tool_call_id: _Optional[str] = ..., tool_calls_json: _Optional[str] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("input_tokens", "output_tokens", "estimated", "cached_input_tokens", "cache_write_input_tokens")
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_FIELD_NUMBER: _ClassVar[int]
    CACHED_INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHE_WRITE_INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    input_tokens: int
    output_tokens: int
    estimated: bool
    cached_input_tokens: int
    cache_write_input_tokens: int
    def __init__(self, input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., estimated: _Optional[bool] = ..., cached_input_tokens: _Optional[int] = ..., cache_write_input_tokens: _Optional[int] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "provider", "tier", "input_usd_per_mtok", "output_usd_per_mtok", "context_window", "latency_slo_ms", "batch_input_usd_per_mtok", "batch_output_usd_per_mtok", "supported_parameters", "cached_input_usd_per_mtok", "cache_write_usd_per_mtok")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    INPUT_USD_PER_MTOK_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_USD_PER_MTOK_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_WINDOW_FIELD_NUMBER: _ClassVar[int]
    LATENCY_SLO_MS_FIELD_NUMBER: _ClassVar[int]
    BATCH_INPUT_USD_PER_MTOK_FIELD_NUMBER: _ClassVar[int]
    BATCH_OUTPUT_USD_PER_MTOK_FIELD_NUMBER: _ClassVar[int]
    SUPPORTED_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    CACHED_INPUT_USD_PER_MTOK_FIELD_NUMBER: _ClassVar[int]
    CACHE_WRITE_USD_PER_MTOK_FIELD_NUMBER: _ClassVar[int]
    name: str
    provider: str
    tier: str
    input_usd_per_mtok: str
    output_usd_per_mtok: str
    context_window: int
    latency_slo_ms: int
    batch_input_usd_per_mtok: str
    batch_output_usd_per_mtok: str
    supported_parameters: _containers.RepeatedScalarFieldContainer[str]
    cached_input_usd_per_mtok: str
    cache_write_usd_per_mtok: str
    def __init__(self, name: _Optional[str] = ..., provider: _Optional[str] = ..., tier: _Optional[str] = ..., input_usd_per_mtok: _Optional[str] = ..., output_usd_per_mtok: _Optional[str] = ..., context_window: _Optional[int] = ..., latency_slo_ms: _Optional[int] = ..., batch_input_usd_per_mtok: _Optional[str] = ..., batch_output_usd_per_mtok: _Optional[str] = ..., supported_parameters: _Optional[_Iterable[str]] = ..., cached_input_usd_per_mtok: _Optional[str] = ..., cache_write_usd_per_mtok: _Optional[str] = ...) -> None: ...

class Prices(_message.Message):
    __slots__ = ("input_usd_per_mtok", "output_usd_per_mtok", "cached_input_usd_per_mtok", "cache_write_usd_per_mtok")
    INPUT_USD_PER_MTOK_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_USD_PER_MTOK_FIELD_NUMBER: _ClassVar[int]
    CACHED_INPUT_USD_PER_MTOK_FIELD_NUMBER: _ClassVar[int]
    CACHE_WRITE_USD_PER_MTOK_FIELD_NUMBER: _ClassVar[int]
    input_usd_per_mtok: str
    output_usd_per_mtok: str
    cached_input_usd_per_mtok: str
    cache_write_usd_per_mtok: str
    def __init__(self, input_usd_per_mtok: _Optional[str] = ..., output_usd_per_mtok: _Optional[str] = ..., cached_input_usd_per_mtok: _Optional[str] = ..., cache_write_usd_per_mtok: _Optional[str] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...
