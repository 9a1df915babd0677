"""Channels from one service to another: mTLS with this service's certificate when it has one, and its
bearer token on every call when it has one (see llmrouter.auth for the server side)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from llmrouter.server import CHANNEL_OPTIONS
from llmrouter.settings import ServiceSettings


def open_channel(target: str, settings: ServiceSettings) -> grpc.aio.Channel:
    interceptors = [] if settings.call_token is None else bearer_token(settings.call_token.get_secret_value())
    if settings.tls_dir is None:
        return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS, interceptors=interceptors)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(settings.tls_dir / "ca.crt").read_bytes(),
        private_key=(settings.tls_dir / "tls.key").read_bytes(),
        certificate_chain=(settings.tls_dir / "tls.crt").read_bytes(),
    )
    return grpc.aio.secure_channel(target, credentials, options=CHANNEL_OPTIONS, interceptors=interceptors)


class _BearerToken:
    """Adds `authorization: Bearer <token>` to a call (call credentials would refuse a plaintext channel, which a
    service mesh's own mTLS may make legitimate)."""

    def __init__(self, token: str) -> None:
        self.header = ("authorization", f"Bearer {token}")

    def _with_token(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()), self.header)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )


class _UnaryToken(_BearerToken, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._with_token(client_call_details), request)


class _StreamToken(_BearerToken, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._with_token(client_call_details), request)


class _BidiToken(_BearerToken, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self, continuation: Callable[..., Any], client_call_details: grpc.aio.ClientCallDetails, request_iterator: Any
    ) -> Any:
        return await continuation(self._with_token(client_call_details), request_iterator)


def bearer_token(token: str) -> list[grpc.aio.ClientInterceptor]:
    """The token on every call, one interceptor per kind of call: a channel files an interceptor under the first kind
    it is of alone (grpc.aio.Channel), so one of both kinds had streamed calls sent without the token (UNAUTHENTICATED
    in auth=token: the router's streams to the providers, the edge's to the router)."""
    return [_UnaryToken(token), _StreamToken(token), _BidiToken(token)]
