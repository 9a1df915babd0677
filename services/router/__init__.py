"""The router service: the policy between the edge and the classifier and providers."""

from __future__ import annotations

from llmrouter.channels import open_channel
from llmrouter.registry import load_registry
from llmrouter.server import Closer, Registrations
from llmrouter.tokens import count_tokens
from llmrouter.v1 import classifier_pb2_grpc, provider_pb2_grpc, router_pb2_grpc
from services.router.servicer import RouterServicer
from services.router.settings import RouterSettings
from services.router.store import open_store


async def build(settings: RouterSettings) -> tuple[Registrations, list[Closer]]:
    try:
        registry = load_registry(settings.registry_path)
    except ValueError as exc:
        raise SystemExit(f"router: {exc}") from None
    count_tokens("")  # loads the tokenizer now: on the first request it would hold the event loop for ~0.3 s
    store = open_store(settings.redis_url)
    classifier = open_channel(settings.classifier_addr, settings)
    providers = open_channel(settings.providers_addr, settings)
    servicer = RouterServicer(
        settings,
        registry,
        store,
        classifier_pb2_grpc.ClassifierStub(classifier),
        provider_pb2_grpc.ProviderStub(providers),
    )
    registrations = {"llmrouter.v1.Router": lambda srv: router_pb2_grpc.add_RouterServicer_to_server(servicer, srv)}
    return registrations, [servicer.close, store.close, classifier.close, providers.close]
