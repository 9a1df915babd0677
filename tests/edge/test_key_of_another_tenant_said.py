"""A key the router refuses for its tenant (a key file moved it without key_move) is the deployment's fault: the edge's
502 says so in the router's words, which name no tenant, rather than blaming a provider."""

from __future__ import annotations

import grpc
from grpc.aio import AioRpcError, Metadata

from llmrouter.errors import ServiceError
from services.edge.app import api_error


def test_a_key_bound_to_another_tenant_is_said_so_not_blamed_on_a_provider() -> None:
    said = "this API key belongs to another tenant: a key serves the one tenant it was first used with"
    error = ServiceError(grpc.StatusCode.PERMISSION_DENIED, "KEY_OF_ANOTHER_TENANT", said, {"field": "tenant"})
    answer = api_error(AioRpcError(error.code, Metadata(), Metadata(*error.trailing_metadata()), said), "r1")
    assert (answer.status, answer.code) == (502, "key_of_another_tenant")
    assert answer.message == said and answer.param is None  # the tenant is the edge's, from the key
