from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StatsRequest(_message.Message):
    __slots__ = ("since", "until", "group_by", "tenant", "admin", "api_key")
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    ADMIN_FIELD_NUMBER: _ClassVar[int]
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    since: float
    until: float
    group_by: str
    tenant: str
    admin: bool
    api_key: str
    def __init__(self, since: _Optional[float] = ..., until: _Optional[float] = ..., group_by: _Optional[str] = ..., tenant: _Optional[str] = ..., admin: _Optional[bool] = ..., api_key: _Optional[str] = ...) -> None: ...

class StatsGroup(_message.Message):
    __slots__ = ("key", "requests", "success_rate", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "escalation_rate", "cache_hit_rate", "fallback_rate", "input_tokens", "output_tokens", "cost_usd", "baseline_cost_usd", "saved_usd", "model_share")
    class ModelShareEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    KEY_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_RATE_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P95_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P99_MS_FIELD_NUMBER: _ClassVar[int]
    ESCALATION_RATE_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_RATE_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_RATE_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    BASELINE_COST_USD_FIELD_NUMBER: _ClassVar[int]
    SAVED_USD_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHARE_FIELD_NUMBER: _ClassVar[int]
    key: str
    requests: int
    success_rate: float
    latency_p50_ms: int
    latency_p95_ms: int
    latency_p99_ms: int
    escalation_rate: float
    cache_hit_rate: float
    fallback_rate: float
    input_tokens: int
    output_tokens: int
    cost_usd: str
    baseline_cost_usd: str
    saved_usd: str
    model_share: _containers.ScalarMap[str, float]
    def __init__(self, key: _Optional[str] = ..., requests: _Optional[int] = ..., success_rate: _Optional[float] = ..., latency_p50_ms: _Optional[int] = ..., latency_p95_ms: _Optional[int] = ..., latency_p99_ms: _Optional[int] = ..., escalation_rate: _Optional[float] = ..., cache_hit_rate: _Optional[float] = ..., fallback_rate: _Optional[float] = ..., input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., cost_usd: _Optional[str] = ..., baseline_cost_usd: _Optional[str] = ..., saved_usd: _Optional[str] = ..., model_share: _Optional[_Mapping[str, float]] = ...) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("total", "groups")
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    total: StatsGroup
    groups: _containers.RepeatedCompositeFieldContainer[StatsGroup]
    def __init__(self, total: _Optional[_Union[StatsGroup, _Mapping]] = ..., groups: _Optional[_Iterable[_Union[StatsGroup, _Mapping]]] = ...) -> None: ...

class BudgetsRequest(_message.Message):
    __slots__ = ("tenant", "admin", "api_key")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    ADMIN_FIELD_NUMBER: _ClassVar[int]
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    admin: bool
    api_key: str
    def __init__(self, tenant: _Optional[str] = ..., admin: _Optional[bool] = ..., api_key: _Optional[str] = ...) -> None: ...

class Budget(_message.Message):
    __slots__ = ("scope", "name", "tenant", "limit_usd", "spent_usd", "held_usd", "remaining_usd", "period", "period_end", "overridden", "tenant_wide", "carried_usd")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_USD_FIELD_NUMBER: _ClassVar[int]
    SPENT_USD_FIELD_NUMBER: _ClassVar[int]
    HELD_USD_FIELD_NUMBER: _ClassVar[int]
    REMAINING_USD_FIELD_NUMBER: _ClassVar[int]
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    PERIOD_END_FIELD_NUMBER: _ClassVar[int]
    OVERRIDDEN_FIELD_NUMBER: _ClassVar[int]
    TENANT_WIDE_FIELD_NUMBER: _ClassVar[int]
    CARRIED_USD_FIELD_NUMBER: _ClassVar[int]
    scope: str
    name: str
    tenant: str
    limit_usd: str
    spent_usd: str
    held_usd: str
    remaining_usd: str
    period: str
    period_end: int
    overridden: bool
    tenant_wide: bool
    carried_usd: str
    def __init__(self, scope: _Optional[str] = ..., name: _Optional[str] = ..., tenant: _Optional[str] = ..., limit_usd: _Optional[str] = ..., spent_usd: _Optional[str] = ..., held_usd: _Optional[str] = ..., remaining_usd: _Optional[str] = ..., period: _Optional[str] = ..., period_end: _Optional[int] = ..., overridden: _Optional[bool] = ..., tenant_wide: _Optional[bool] = ..., carried_usd: _Optional[str] = ...) -> None: ...

class BudgetsResponse(_message.Message):
    __slots__ = ("budgets",)
    BUDGETS_FIELD_NUMBER: _ClassVar[int]
    budgets: _containers.RepeatedCompositeFieldContainer[Budget]
    def __init__(self, budgets: _Optional[_Iterable[_Union[Budget, _Mapping]]] = ...) -> None: ...

class SetBudgetRequest(_message.Message):
    __slots__ = ("scope", "name", "limit_usd", "admin", "api_key")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    LIMIT_USD_FIELD_NUMBER: _ClassVar[int]
    ADMIN_FIELD_NUMBER: _ClassVar[int]
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    scope: str
    name: str
    limit_usd: str
    admin: bool
    api_key: str
    def __init__(self, scope: _Optional[str] = ..., name: _Optional[str] = ..., limit_usd: _Optional[str] = ..., admin: _Optional[bool] = ..., api_key: _Optional[str] = ...) -> None: ...

class KeyMovesRequest(_message.Message):
    __slots__ = ("admin", "limit")
    ADMIN_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    admin: bool
    limit: int
    def __init__(self, admin: _Optional[bool] = ..., limit: _Optional[int] = ...) -> None: ...

class KeyMove(_message.Message):
    __slots__ = ("key_id", "from_tenant", "from_none", "to_tenant", "by", "at")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_TENANT_FIELD_NUMBER: _ClassVar[int]
    FROM_NONE_FIELD_NUMBER: _ClassVar[int]
    TO_TENANT_FIELD_NUMBER: _ClassVar[int]
    BY_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    from_tenant: str
    from_none: bool
    to_tenant: str
    by: str
    at: float
    def __init__(self, key_id: _Optional[str] = ..., from_tenant: _Optional[str] = ..., from_none: _Optional[bool] = ..., to_tenant: _Optional[str] = ..., by: _Optional[str] = ..., at: _Optional[float] = ...) -> None: ...

class KeyMovesResponse(_message.Message):
    __slots__ = ("moves",)
    MOVES_FIELD_NUMBER: _ClassVar[int]
    moves: _containers.RepeatedCompositeFieldContainer[KeyMove]
    def __init__(self, moves: _Optional[_Iterable[_Union[KeyMove, _Mapping]]] = ...) -> None: ...
