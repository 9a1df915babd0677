"""The llmrouter.v1.Provider servicer: validates a request, resolves the model, hands it to the dispatcher."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from decimal import Decimal

import grpc

from llmrouter.errors import ServiceError, invalid
from llmrouter.registry import LiveRegistry, ModelSpec, Registry
from llmrouter.server import Closer, Registrations
from llmrouter.v1 import common_pb2, provider_pb2, provider_pb2_grpc
from llmrouter.validation import AmountError, parse_amount, validate
from services.providers import batches, metrics
from services.providers.catalog import Catalog, Retirement, build_catalog, keys_changed
from services.providers.gateways.base import Message, UpstreamRequest
from services.providers.honoured import refuse_unhonoured
from services.providers.settings import ProvidersSettings

SERVICE = "llmrouter.v1.Provider"


class ProviderServicer(provider_pb2_grpc.ProviderServicer):
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    async def Generate(
        self, request: provider_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> provider_pb2.GenerateResponse:
        model, dispatcher = self.catalog.resolve(request.model)
        upstream = upstream_request(model, request)
        stream_amounts(model, request)  # read by streams alone, but a malformed amount is refused on any call
        return await dispatcher.generate(model, upstream, context.time_remaining())

    async def GenerateStream(
        self, request: provider_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[provider_pb2.GenerateChunk]:
        async for chunk in self._stream(request, context, None):
            yield chunk

    async def GenerateStreamOnCue(
        self, requests: AsyncIterator[provider_pb2.CuedRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[provider_pb2.GenerateChunk]:
        messages = aiter(requests)
        first = await anext(messages, None)
        if first is None or first.WhichOneof("kind") != "request":
            raise invalid("the first message must be the request", "request")
        async for chunk in self._stream(first.request, context, lambda: send_cue(messages)):
            yield chunk

    async def _stream(
        self,
        request: provider_pb2.GenerateRequest,
        context: grpc.aio.ServicerContext,
        cue: Callable[[], Awaitable[None]] | None,
    ) -> AsyncIterator[provider_pb2.GenerateChunk]:
        model, dispatcher = self.catalog.resolve(request.model)
        upstream = upstream_request(model, request)
        budget, budget_pricing = stream_amounts(model, request)
        stream = dispatcher.generate_stream(
            model,
            upstream,
            context.time_remaining(),
            budget,
            tool_call_progress=request.tool_call_progress,
            input_progress=request.input_progress,
            cue=cue,
            refusal_progress=request.refusal_progress,
            usage_final=request.usage_final,
            budget_pricing=budget_pricing,
        )
        # aclosing: a caller that goes away closes the upstream stream now, not whenever the GC gets to it.
        async with aclosing(stream) as chunks:
            async for chunk in chunks:
                yield chunk

    async def SubmitBatch(
        self, request: provider_pb2.SubmitBatchRequest, context: grpc.aio.ServicerContext
    ) -> provider_pb2.SubmitBatchResponse:
        try:
            model, dispatcher = self.catalog.resolve(request.model)
        except ServiceError as exc:
            raise batches.not_created(exc.message) from None
        api, _ = batches.batch_api(self.catalog.registry, model, dispatcher)
        lines = [(r.request_id, upstream_request(model, r)) for r in request.requests]
        with dispatcher.calling_batches():  # resolved before a reload, its client is not closed under it
            provider_batch = await batches.submit(api, lines, dispatcher.redact)
        return provider_pb2.SubmitBatchResponse(batch_id=provider_batch)

    async def PollBatch(
        self, request: provider_pb2.PollBatchRequest, context: grpc.aio.ServicerContext
    ) -> provider_pb2.PollBatchResponse:
        model, dispatcher = self.catalog.resolve(request.model)
        api, priced = batches.poll_api(self.catalog.registry, model, dispatcher)
        with dispatcher.calling_batches():
            ids = list(request.request_ids)
            return await batches.poll(api, priced, request.batch_id, ids, dispatcher.redact, request.partial)

    async def ListModels(
        self, request: common_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.ListModelsResponse:
        registry = self.catalog.registry
        return common_pb2.ListModelsResponse(models=[registry.info(m) for m in self.catalog.usable_models()])


def upstream_request(model: ModelSpec, request: provider_pb2.GenerateRequest) -> UpstreamRequest:
    valid = validate(request)
    temperature = request.temperature if request.HasField("temperature") else None
    refuse_unhonoured(model, valid.passthrough, valid.raw_arguments_at, temperature)
    # OpenAI's "developer" role is its newer name for "system"; upstreams that predate it (vLLM, Ollama,
    # Anthropic, the local model) know only "system".
    messages = [
        Message("system" if m.role == "developer" else m.role, m.content, m.name, m.tool_call_id, calls)
        for m, calls in zip(request.messages, valid.tool_calls, strict=True)
    ]
    # Never ask for more than the model can give: upstreams refuse it, and it bounds the worst-case cost.
    wanted = request.max_tokens if request.HasField("max_tokens") else model.max_output_tokens
    return UpstreamRequest(
        model=model.upstream_name,
        messages=messages,
        max_tokens=min(wanted, model.max_output_tokens),
        temperature=temperature,
        passthrough=valid.passthrough,
        request_id=request.request_id,
        want_logprobs=request.want_confidence and bool(model.logprobs),  # the registry's word, per model
    )


async def send_cue(messages: AsyncIterator[provider_pb2.CuedRequest]) -> None:
    """Wait for the caller's word to reach the upstream: `send` true, and nothing else (a `send` false, or a message
    with neither field set, lets nothing go). A second request is refused: the call serves its first. Its side of the
    stream ending first is no word: gRPC ends it that way for a caller that cancelled too, before the call itself is
    seen cancelled."""
    async for message in messages:
        kind = message.WhichOneof("kind")
        if kind == "request":
            raise invalid("the request comes once, first: the messages after it are `send`", "request")
        if kind == "send" and message.send:
            return
    raise ServiceError(
        grpc.StatusCode.CANCELLED,
        "UPSTREAM_NOT_REACHED",
        "the caller's side of the stream ended before it let the request go; no upstream was called",
        {"sent": "false"},
    )


def stream_amounts(model: ModelSpec, request: provider_pb2.GenerateRequest) -> tuple[Decimal | None, ModelSpec]:
    """The request's retry budget and the model at the prices that budget is room at, each refused when malformed."""
    return retry_budget(request), admitted_pricing(model, request)


def retry_budget(request: provider_pb2.GenerateRequest) -> Decimal | None:
    """What the caller lets failed stream attempts consume before no more are made (None: no limit)."""
    if not request.HasField("retry_budget_usd"):
        return None
    try:
        budget = parse_amount(request.retry_budget_usd)  # as the router reads a caller's amounts
    except AmountError as exc:
        raise invalid(f"retry_budget_usd {exc}", "retry_budget_usd") from None
    if budget < 0:
        raise invalid("retry_budget_usd must be a non-negative number", "retry_budget_usd")
    return budget


def admitted_pricing(model: ModelSpec, request: provider_pb2.GenerateRequest) -> ModelSpec:
    """The model at the prices its caller admitted the request at (admitted_prices), which retry_budget_usd is room
    at; at the registry's when the caller did not say (a version before)."""
    if not request.HasField("admitted_prices"):
        return model
    prices = request.admitted_prices
    return model.model_copy(
        update={
            "input_usd_per_mtok": _price(prices.input_usd_per_mtok, "input_usd_per_mtok"),
            "output_usd_per_mtok": _price(prices.output_usd_per_mtok, "output_usd_per_mtok"),
            "cached_input_usd_per_mtok": _optional_price(prices.cached_input_usd_per_mtok, "cached_input_usd_per_mtok"),
            "cache_write_usd_per_mtok": _optional_price(prices.cache_write_usd_per_mtok, "cache_write_usd_per_mtok"),
        }
    )


def _optional_price(text: str, name: str) -> Decimal | None:
    return None if text == "" else _price(text, name)


def _price(text: str, name: str) -> Decimal:
    field = f"admitted_prices.{name}"
    try:
        price = parse_amount(text)
    except AmountError as exc:
        raise invalid(f"{field} {exc}", field) from None
    if price < 0:
        raise invalid(f"{field} must be a non-negative number", field)
    return price


async def build(settings: ProvidersSettings) -> tuple[Registrations, list[Closer]]:
    retirement = Retirement()

    async def reload(new: Registry) -> None:
        """Swap in the catalog of the registry and keys in place now; calls in flight keep the model and dispatcher
        they resolved. A provider whose key changed gets a new dispatcher, the old one retired."""
        old = servicer.catalog
        servicer.catalog = await build_catalog(new, settings, reuse=old.dispatchers)
        retirement.retire(old, servicer.catalog)

    try:
        registry = LiveRegistry(
            settings.registry_path,
            "providers",
            settings.registry_reload_s,
            on_change=reload,
            also_changed=lambda: keys_changed(servicer.catalog, settings),  # a mounted Secret changes in place
        )
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    servicer = ProviderServicer(await build_catalog(registry.current, settings))

    def key_validity() -> dict[str, bool]:
        return servicer.catalog.key_validity()  # the catalog in force as scraped

    metrics.KEY_VALID.sources.append(key_validity)
    registry.start()

    async def close() -> None:
        if key_validity in metrics.KEY_VALID.sources:  # a server stopped twice closes twice
            metrics.KEY_VALID.sources.remove(key_validity)
        await registry.close()
        await retirement.aclose()
        await servicer.catalog.aclose()

    registrations: Registrations = {
        SERVICE: lambda server: provider_pb2_grpc.add_ProviderServicer_to_server(servicer, server)
    }
    return registrations, [close]
