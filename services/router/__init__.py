"""The router service: the policy between the edge and the classifier and providers."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from llmrouter.auth import parse_callers
from llmrouter.channels import open_channel
from llmrouter.private_paths import UnsafePath
from llmrouter.registry import LiveRegistry
from llmrouter.server import Closer, Registrations, RunningServer
from llmrouter.tokens import encoding
from llmrouter.v1 import classifier_pb2_grpc, operator_pb2_grpc, provider_pb2_grpc, router_pb2_grpc
from services.router import calibration
from services.router.cache import Cache, RedisCache, open_cache
from services.router.outbox import Outbox
from services.router.servicer import RouterServicer
from services.router.settings import CHARGE_LANDS_S, RouterSettings
from services.router.store import RedisStore, Store, open_store
from services.router.store_memory import StoreMemory
from services.router.upkeep import Upkeep

log = logging.getLogger("llmrouter.router")


def outbox_for(settings: RouterSettings) -> Outbox:
    """The charge outbox the settings name; a directory or file another user could have made or could change, or one
    that cannot be made, ends the process with why."""
    try:
        return Outbox(settings.data_dir, settings.request_id_ttl_s - settings.request_timeout_s - CHARGE_LANDS_S)
    except UnsafePath as exc:
        raise SystemExit(f"router: ROUTER_DATA_DIR={settings.data_dir} refused for the charge outbox: {exc}") from None
    except OSError as exc:
        raise SystemExit(f"router: ROUTER_DATA_DIR={settings.data_dir} cannot keep the charge outbox: {exc}") from None


async def build(
    settings: RouterSettings,
) -> tuple[Registrations, list[Closer], Callable[[RunningServer], None]]:
    try:  # reloaded when the file changes; the models list follows at the next request
        registry = LiveRegistry(settings.registry_path, "router", settings.registry_reload_s)
        reference = calibration.load(settings.calibration_path)
    except ValueError as exc:  # CalibrationError is one too
        raise SystemExit(f"router: {exc}") from None
    if settings.end_user_hash_secret is None:
        log.warning(
            "ROUTER_END_USER_HASH_SECRET is unset: the end-user ids sent to providers are keyed by the tenant's name "
            "alone, so whoever knows it can confirm a guessed id (an email address); set a secret of 16 bytes or more"
        )
    for name in ("cl100k_base", "o200k_base"):  # loaded now: on a request each would hold the event loop ~0.3 s
        encoding(name)
    policy = None
    if settings.redis_url:
        # Imported here: `python -m services.router.money_check` imports this package first, and runpy warns of a
        # module it is about to run that is imported already.
        from services.router.money_check import check_money_redis
        from services.router.money_policy import EvictionRecheck

        unchecked = await check_money_redis(
            settings.redis_url, settings.allow_evicting_money_store, settings.cache_redis_url
        )
        if unchecked:  # checked by the upkeep once back
            policy = EvictionRecheck(settings.redis_url, settings.allow_evicting_money_store).never_evicts
    store = open_store(
        settings.redis_url, settings.request_id_ttl_s, settings.hold_totals, settings.reconcile_master_answers_s
    )
    cache = open_cache(settings.cache_redis_url)
    outbox = outbox_for(settings)
    upkeep = Upkeep(
        store,
        outbox,
        settings.router_name,
        settings.upkeep_interval_s,
        settings.heartbeat_ttl_s,
        settings.pending_stale_s,
        StoreMemory(redis_clients(store, cache)),
        policy,
    )
    # Heartbeat first: pending charges must never belong to a router not known alive. Its replay of the outbox is
    # bounded (REPLAY_SLICE_S), well within the chart's startupProbe: the rest lands once the router serves.
    await upkeep.first_round()
    classifier = open_channel(settings.classifier_addr, settings)
    providers = open_channel(settings.providers_addr, settings)
    servicer = RouterServicer(
        settings,
        registry,
        store,
        cache,
        outbox,
        classifier_pb2_grpc.ClassifierStub(classifier),
        provider_pb2_grpc.ProviderStub(providers),
        reference,
    )
    # Imported here: the ledger package builds on the router's modules, which import this package first.
    from services.ledger.service import open_ledger_sink
    from services.router.budget_alerts import start_budget_watch
    from services.router.operations import Operations
    from services.router.operator_servicer import OperatorServicer

    ledger, stop_sink = await open_ledger_sink(settings, store)
    operations = Operations(store, servicer.admission.allowance, ledger, parse_callers(settings.callers))
    operator = OperatorServicer(operations)
    stop_watch = start_budget_watch(settings, operations)
    registrations = {
        "llmrouter.v1.Router": lambda srv: router_pb2_grpc.add_RouterServicer_to_server(servicer, srv),
        "llmrouter.v1.Operator": lambda srv: operator_pb2_grpc.add_OperatorServicer_to_server(operator, srv),
    }

    def on_started(server: RunningServer) -> None:
        async def report(up: bool) -> None:
            if up:  # back within reach: admissions go to it again at once, not a probe later
                servicer.admission.undoing.answered()
            await server.set_serving(up)

        upkeep.start(report)
        registry.start()
        server.cut = servicer.admitted.cut

    # In this order (the server's stop runs them so): the servicer's charges land while the heartbeat still says
    # this router lives (no reconciler takes them for a dead one's), then the upkeep's last replay of the outbox takes
    # those that went there, before the stores and channels close.
    closers = [servicer.close, upkeep.close, registry.close, stop_watch, stop_sink, store.close, cache.close]
    closers += [classifier.close, providers.close]
    return registrations, closers, on_started


def redis_clients(store: Store, cache: Cache) -> dict[str, Any]:
    """The Redis clients of the money store and the response cache, by store label; none for one kept in process."""
    clients = {}
    if isinstance(store, RedisStore):
        clients["money"] = store.redis
    if isinstance(cache, RedisCache):
        clients["cache"] = cache.redis
    return clients
