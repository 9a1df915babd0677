"""The Retry-After the edge sends is whole seconds, whatever a router or providers service of another version says."""

from __future__ import annotations

import grpc
import pytest
from grpc.aio import AioRpcError, Metadata

from llmrouter.errors import ServiceError
from services.edge.app import api_error


def refused(retry_after_s: str) -> AioRpcError:
    error = ServiceError(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED", "slow down", {"retry_after_s": retry_after_s}
    )
    return AioRpcError(error.code, Metadata(), Metadata(*error.trailing_metadata()), error.message)


@pytest.mark.parametrize(
    ("said", "sent"),
    [("7", "7"), ("1.5", "2"), ("30.4371", "31"), ("1e11", "86400"), ("inf", ""), ("-3", ""), ("soon", "")],
)
def test_retry_after_is_whole_seconds(said: str, sent: str) -> None:
    answer = api_error(refused(said), "req")
    assert answer.status == 429 and answer.retry_after == sent
