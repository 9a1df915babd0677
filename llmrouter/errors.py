"""Errors that cross service boundaries: a gRPC status code plus a google.rpc.ErrorInfo detail, so callers
(the edge above all) can tell a context-length error from a budget error without parsing messages."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, cast

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

DOMAIN = "llmrouter"
# A service at its limit of calls in flight refusing one before any work (llmrouter.overload): RESOURCE_EXHAUSTED.
OVERLOADED = "OVERLOADED"
# A status carries its message twice (grpc-message and the details), and gRPC drops the whole status past 8 KiB of
# metadata: a message quoting a caller's long value (a max_cost_usd of 20,000 digits) then reached the edge as a
# transport error. Longer messages are cut; the exception keeps the whole one for logs.
MAX_MESSAGE_CHARS = 2_000
# So is each ErrorInfo metadata value: one quoting a caller's value (CollectBatch's model name, 20,000 characters long)
# passed gRPC's 16 KiB hard limit, and the caller got "Stream removed" instead of the refusal. As long as any id kept.
MAX_METADATA_CHARS = 256
_DETAILS_KEY = "grpc-status-details-bin"
# A provider failure's ErrorInfo metadata key, "true" when a failure otherwise of unknown outcome (a timeout, a
# malformed event, a connection lost) came after the upstream reported its whole usage (a stream that said its finish
# and counts, cut before its end marker): the usage the metadata carries is the whole bill, and the router charges it
# rather than the attempt's worst case.
USAGE_FINAL = "usage_final"


# How gRPC words a call that never reached its server (it could not connect, or resolve its name): the first under
# pick-first, the second under round-robin (llmrouter.server.CHANNEL_OPTIONS).
NEVER_CONNECTED = ("failed to connect to all addresses", "connections to all backends failing", "DNS resolution failed")


class ServiceError(Exception):
    """Raised by business logic; the server interceptor turns it into a status with details."""

    def __init__(
        self,
        code: grpc.StatusCode,
        reason: str,
        message: str,
        metadata: Mapping[str, str] | None = None,
        retry_delay_s: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = _cut(message, MAX_MESSAGE_CHARS)
        self.metadata = {key: _cut(value, MAX_METADATA_CHARS) for key, value in (metadata or {}).items()}
        # google.rpc.RetryInfo: when a retry may succeed, for gRPC callers that back off on the standard detail.
        self.retry_delay_s = retry_delay_s
        # Raised by one of our services (it travels with its ErrorInfo), rather than a call that broke between
        # services (a server that died or drained mid-call), which nobody on the other side answered.
        self.explained = True

    @property
    def unanswered(self) -> bool:
        """The service never answered the call: it could not be reached (UNAVAILABLE), or it dropped the call
        unserved (CANCELLED: a gRPC server that starts to stop cancels the calls it has received but given to
        no handler yet, which a loaded server can have several of). Neither carries our ErrorInfo."""
        return not self.explained and self.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)

    @property
    def shed(self) -> bool:
        """The service's gRPC server dropped the call before any handler ran: CANCELLED without our ErrorInfo (past its
        queue of calls waiting for a handler, as a loaded server does, or as it began to stop), or refused it at its
        limit of calls in flight (overloaded). It set off nothing. A server that stops mid-call, or dies, fails it
        UNAVAILABLE instead (cut_mid_call)."""
        return (not self.explained and self.code == grpc.StatusCode.CANCELLED) or self.overloaded

    @property
    def overloaded(self) -> bool:
        """A service at its limit of calls in flight refused the call before authenticating or parsing it
        (llmrouter.overload); metadata["service"] names which. Any other RESOURCE_EXHAUSTED (a rate limit, upstream or
        the caller's own) is not this: it may come after work that costs."""
        return self.explained and self.code == grpc.StatusCode.RESOURCE_EXHAUSTED and self.reason == OVERLOADED

    @property
    def never_connected(self) -> bool:
        """gRPC never reached the service (it could not connect, or resolve its name): the call set off nothing."""
        return (
            not self.explained and self.code == grpc.StatusCode.UNAVAILABLE and self.message.startswith(NEVER_CONNECTED)
        )

    @property
    def cut_mid_call(self) -> bool:
        """The call reached the service, which then went away (died, or drained past its grace) without answering:
        UNAVAILABLE without our ErrorInfo, unless gRPC never connected at all. What the call set off may have
        happened."""
        return (
            not self.explained
            and self.code == grpc.StatusCode.UNAVAILABLE
            and not self.message.startswith(NEVER_CONNECTED)
        )

    @property
    def past_deadline(self) -> bool:
        """The caller's own deadline passed before the service answered (DEADLINE_EXCEEDED without our ErrorInfo: the
        service would have said so itself): the call may still run there, and what it set off may happen."""
        return not self.explained and self.code == grpc.StatusCode.DEADLINE_EXCEEDED

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        info = error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN, metadata=self.metadata)
        details = [_packed(info)]
        if self.retry_delay_s is not None:
            delay = duration_pb2.Duration(seconds=self.retry_delay_s)
            details.append(_packed(error_details_pb2.RetryInfo(retry_delay=delay)))
        status = status_pb2.Status(code=self.code.value[0], message=self.message, details=details)
        return ((_DETAILS_KEY, status.SerializeToString()),)

    @classmethod
    def from_rpc_error(cls, err: grpc.RpcError) -> ServiceError:
        """Rebuild the error a downstream service raised, keeping its reason and metadata."""
        code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
        message = (err.details() if hasattr(err, "details") else None) or str(err)
        reason, metadata, explained, retry_delay_s = "UPSTREAM_ERROR", {}, False, None
        trailing = cast(
            Iterable[tuple[str, Any]], (err.trailing_metadata() if hasattr(err, "trailing_metadata") else None) or ()
        )
        for key, value in trailing:  # (key, value) pairs at run time, whatever the stubs say
            if key == _DETAILS_KEY:
                status = status_pb2.Status.FromString(value)
                for detail in status.details:
                    info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
                    if detail.Unpack(info):
                        reason, metadata, explained = info.reason, dict(info.metadata), info.domain == DOMAIN
                    elif detail.Unpack(retry):
                        retry_delay_s = retry.retry_delay.seconds
        error = cls(code, reason, message, metadata, retry_delay_s)
        error.explained = explained
        return error


def _packed(detail: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(detail)
    return packed


def _cut(text: str, most: int) -> str:
    return text if len(text) <= most else text[: most - 3] + "..."


def invalid(message: str, field: str = "", reason: str = "INVALID_REQUEST") -> ServiceError:
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, reason, message, {"field": field} if field else None)


def overloaded(service: str, retry_delay_s: int) -> ServiceError:
    """A call refused at the service's limit of calls in flight, before any work: safe to retry after the delay."""
    return ServiceError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        OVERLOADED,
        f"the {service} service is at its limit of calls in flight: retry in {retry_delay_s} s",
        {"service": service, "retry_after_s": str(retry_delay_s)},
        retry_delay_s,
    )
