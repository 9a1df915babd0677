"""The edge's operator API over the Router's Operator and Decide RPCs: stats, budgets (an admin sets
overrides), the key moves on record (an admin's), and the routing decision without a generation. A tenant's key sees
its tenant's budget, and its own key's budget and stats, never another key's; an admin key sees all. Bodies are the
RPCs' answers as JSON, money as exact decimal strings."""

from __future__ import annotations

import calendar
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from llmrouter.v1 import operator_pb2, operator_pb2_grpc, router_pb2_grpc
from llmrouter.validation import DECIMAL
from services.edge import router_headers
from services.edge.given_once import known_only, single
from services.edge.off_loop import parse_off_loop
from services.edge.openai_api import ApiError, check_encoded_size, decode_json, parse_request

log = logging.getLogger("llmrouter.edge")
GROUPINGS = ("", "model", "tenant", "day")
STATS_PARAMETERS = ("since", "until", "group_by")


def as_json(message: Any) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def instant(params: QueryParams, name: str) -> float:
    """A query parameter as Unix seconds: a number, or a UTC date or time (YYYY-MM-DD[THH:MM:SS]); 0 if absent."""
    text = single(params, name) or ""
    if not text:
        return 0.0
    refusal = ApiError(400, f"{name} must be Unix seconds or a UTC date YYYY-MM-DD", param=name, code="invalid_value")
    # ASCII, and a number as JSON writes one: float() also takes `1_700_000_000`, Unicode digits (an Arabic-Indic
    # one is 1) and blanks around it, and strptime's %Y Unicode digits, each read as a bound the caller did not write.
    if not text.isascii():
        raise refusal
    if not DECIMAL.fullmatch(text):
        for layout in ("%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%SZ"):
            try:
                return float(calendar.timegm(time.strptime(text, layout)))
            except ValueError:
                pass
        raise refusal
    value = float(text)
    if not 0 <= value < 1e11:
        raise refusal
    return value


class OperatorRoutes:
    def __init__(
        self,
        edge: Any,
        operator: operator_pb2_grpc.OperatorStub,
        router: router_pb2_grpc.RouterStub,
        api_error: Callable[[grpc.RpcError, str], ApiError],
    ) -> None:
        self.edge = edge  # services.edge.app.Edge: who the caller is, its body limit and routing headers
        self.operator = operator
        self.router = router
        self.api_error = api_error

    def routes(self) -> list[Route]:
        return [
            Route("/v1/router/stats", self.stats, methods=["GET"]),
            Route("/v1/router/budgets", self.budgets, methods=["GET"]),
            Route("/v1/router/budgets/{scope}/{name}", self.set_budget, methods=["PUT", "DELETE"]),
            Route("/v1/router/key-moves", self.key_moves, methods=["GET"]),
            Route("/v1/router/decide", self.decide, methods=["POST"]),
        ]

    async def stats(self, request: Request) -> Response:
        tenant, key = self.edge.caller(request)
        admin = self.edge.keys.is_admin(key)
        known_only(request.query_params, STATS_PARAMETERS, "stats take")
        group_by = single(request.query_params, "group_by") or ""
        if group_by not in GROUPINGS:
            raise ApiError(400, "group_by must be model, tenant or day", param="group_by", code="invalid_value")
        since, until = instant(request.query_params, "since"), instant(request.query_params, "until")
        # The key too: a key that is no admin's sees its own requests, not its colleagues'.
        message = operator_pb2.StatsRequest(
            since=since, until=until, group_by=group_by, tenant=tenant, admin=admin, api_key=key
        )
        return JSONResponse(as_json(await self._call(self.operator.Stats, message, "stats")))

    async def budgets(self, request: Request) -> Response:
        tenant, key = self.edge.caller(request)
        known_only(request.query_params, (), "budgets take")  # ignored, `?tenant=acme` listed every tenant's
        admin = self.edge.keys.is_admin(key)
        # The key too: a key that is no admin's sees its tenant's budget and its own, not its colleagues' spend.
        message = operator_pb2.BudgetsRequest(tenant=tenant, admin=admin, api_key=key)
        reply = await self._call(self.operator.Budgets, message, "budgets")
        return JSONResponse(as_json(reply))

    async def set_budget(self, request: Request) -> Response:
        _, key = self.edge.caller(request)
        if not self.edge.keys.is_admin(key):
            raise ApiError(403, "only an admin key may set budgets", code="permission_denied")
        limit: Any = ""
        if request.method == "PUT":
            # strict: deep nesting is a 400, not a 500
            body = await parse_off_loop(await self.edge.read_body(request), decode_json)
            # A field beside limit_usd sets nothing: ignored, a misspelt or hoped-for one (`limt_usd`, a `period`)
            # answered 200 while the budget the admin believed set was not.
            unknown = sorted(set(body) - {"limit_usd"}) if isinstance(body, dict) else []
            if unknown:
                shown = unknown[0][:64]
                told = f"unrecognized request argument: {shown!r} (a budget takes limit_usd alone)"
                raise ApiError(400, told, param=shown, code="unknown_parameter")
            limit = body.get("limit_usd") if isinstance(body, dict) else None
            if not isinstance(limit, str) or not limit:
                told = "limit_usd must be a decimal string of USD"
                raise ApiError(400, told, param="limit_usd", code="invalid_value")
        message = operator_pb2.SetBudgetRequest(
            scope=request.path_params["scope"],
            name=request.path_params["name"],
            limit_usd=limit,
            admin=True,
            api_key=key,  # the change's record names the admin's key id
        )
        return JSONResponse(as_json(await self._call(self.operator.SetBudget, message, "budget changes")))

    async def key_moves(self, request: Request) -> Response:
        """An admin's: the API keys moved between tenants, as recorded (the router's KeyMoves), the latest first."""
        _, key = self.edge.caller(request)
        if not self.edge.keys.is_admin(key):
            raise ApiError(403, "only an admin key may list key moves", code="permission_denied")
        known_only(request.query_params, ("limit",), "key moves take")
        text = single(request.query_params, "limit") or ""  # none: the router's default
        if text and not (text.isascii() and text.isdigit() and len(text) <= 4 and int(text) > 0):
            # 0 is the RPC's "none given": ?limit=0 answered the default 100, not the refusal the README promises.
            raise ApiError(400, "limit must be a whole number, 1 to 1000", param="limit", code="invalid_value")
        message = operator_pb2.KeyMovesRequest(admin=True, limit=int(text or 0))
        return JSONResponse(as_json(await self._call(self.operator.KeyMoves, message, "key moves")))

    async def decide(self, request: Request) -> Response:
        """The Decide RPC: the chat completion request's routing decision; no provider is called."""
        tenant, key = self.edge.caller(request)
        parsed, raw = await parse_off_loop(await self.edge.read_body(request), parse_request)
        message = parsed.to_router(raw, tenant, key, uuid.uuid4().hex)
        self.edge.apply_headers(request, message)
        check_encoded_size(message)
        try:
            return JSONResponse(as_json(await self._call(self.router.Decide, message, "routing decisions")))
        except ApiError as error:
            raise router_headers.named_as_sent(error, request.headers) from None

    async def _call(self, method: Any, message: Any, served: str) -> Any:
        """Every route's call of the router; `served` names what it asks for, in words, for a router without the RPC."""
        try:
            return await method(message, timeout=30)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.UNIMPLEMENTED:
                # A router of a version before the RPC (a rolling upgrade under way, or the routers not upgraded):
                # what the caller can act on, where the generic answer blamed a provider (a 502).
                log.warning("the router does not serve an operator call", extra={"served": served})
                told = f"the router does not serve {served} yet (upgrade the routers)"
                raise ApiError(501, told, code="not_implemented") from None
            raise self.api_error(err, uuid.uuid4().hex) from None
