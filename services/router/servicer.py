"""The Router gRPC service: thin glue from the RPCs to admission, routing, serving, charging and the cache."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from decimal import Decimal
from typing import Any

from llmrouter import later_decisions
from llmrouter.errors import ServiceError
from llmrouter.registry import LiveRegistry
from llmrouter.v1 import classifier_pb2_grpc, common_pb2, provider_pb2_grpc, router_pb2, router_pb2_grpc
from services.router import admission, charging, escalation, faults, metrics
from services.router.admission import Admission
from services.router.cache import Cache, ResponseCache
from services.router.calibration import Calibration
from services.router.deferred import Deferred, KeptAnswers
from services.router.models import AvailableModels
from services.router.outbox import Outbox
from services.router.routed import Routed, Served
from services.router.routing import Routing
from services.router.score_cache import ScoreCache
from services.router.serving import Serving, StreamState, answered_by, could_escalate
from services.router.sessions import Sessions, stick
from services.router.settings import RouterSettings
from services.router.shutdown_cut import AdmittedCalls, cut_error
from services.router.store import Store
from services.router.targets import Targets
from services.router.unclassified import Unclassified
from services.router.verifying import ClassifierVerifier

log = logging.getLogger("llmrouter.router")


class RouterServicer(router_pb2_grpc.RouterServicer):
    def __init__(
        self,
        settings: RouterSettings,
        registry: LiveRegistry,
        store: Store,
        cache: Cache,
        outbox: Outbox,
        classifier: classifier_pb2_grpc.ClassifierStub,
        providers: provider_pb2_grpc.ProviderStub,
        reference: Calibration | None,  # turns strong shares into quality targets; None: never built
    ) -> None:
        self.settings = settings
        self.available = AvailableModels(registry, providers, settings.models_refresh_s)
        self.admission = Admission(settings, registry, store, outbox)
        targets = Targets(settings, reference)
        unclassified = Unclassified(settings.classifier_fallback, reference, targets, settings.expected_output_tokens)
        unclassified.warm(registry.current)
        self.routing = Routing(
            classifier,
            self.available,
            settings.classifier_timeout_s,
            targets,
            self.admission.tenant_labels,
            unclassified,
            ScoreCache(settings.score_cache_entries),
            settings.cache_scope,
            settings.tenant_cache_scope,
        )
        self.charger = charging.Charger(store, outbox, self.available)
        verifier = (
            ClassifierVerifier(
                classifier,
                settings.verifier_timeout_s,
                settings.verifier_escalate_below,
                settings.verifier_modes,
            )
            if settings.verifier
            else None
        )
        self.serving = Serving(providers, self.admission, verifier)
        self.cache = ResponseCache(
            cache, settings.cache_ttl_s, settings.cache_scope, settings.tenant_cache_scope, verifier
        )
        self.sessions = Sessions(cache, settings.session_ttl_s)
        self.deferred = Deferred(
            lambda request, context: self._route(request, context, admit=False),
            self.admission,
            store,
            providers,
            registry,
            self.available.baseline,
            settings.provider_batch_hold_s,
            KeptAnswers(settings.batch_answer_kept_s, settings.batch_answer_kept_bytes),
        )
        self.admitted = AdmittedCalls()

    async def ListModels(self, request: common_pb2.ListModelsRequest, context: Any) -> common_pb2.ListModelsResponse:
        models = await self.available.get(context.time_remaining())
        registry = self.available.registry  # read with the models, before any other await
        return common_pb2.ListModelsResponse(models=[registry.info(m) for m in models])

    async def Decide(self, request: router_pb2.CompleteRequest, context: Any) -> router_pb2.Decision:
        return (await self._route(request, context, admit=False, count=True)).decision

    async def Complete(self, request: router_pb2.CompleteRequest, context: Any) -> router_pb2.CompleteResponse:
        routed = await self._route(request, context)
        await self._refuse_if_cut(routed)
        # Shielded: a caller that leaves does not stop the generation it caused, which is charged when done.
        work = self.charger.run_to_end(self._complete_and_settle(routed, context))
        with self.admitted.tracked():
            return await self._awaited_unless_cut(routed, work)

    async def CompleteStream(
        self, request: router_pb2.CompleteRequest, context: Any
    ) -> AsyncIterator[router_pb2.CompleteChunk]:
        routed = await self._route(request, context)
        await self._refuse_if_cut(routed)
        told = DecisionsTold(later_decisions.announced(context))
        with self.admitted.tracked():
            if request.buffer_stream:  # settled by its own work alone, which nothing else may settle while it runs
                async for chunk in self._buffered_stream(routed, context):
                    if not told.withheld(chunk):
                        yield chunk
                return
            # Nested, so a cut landing while a failure or a fault is being settled (in the handlers below) is caught
            # too: left to gRPC, it was a bare cancellation, its caller told nothing of its charge.
            try:
                try:
                    async with aclosing(self._complete_stream(routed, context)) as chunks:
                        async for chunk in chunks:
                            if told.withheld(chunk):
                                continue
                            with self.admitted.sending(cut_after=not chunk.HasField("final")):
                                yield chunk
                except ServiceError as failed:
                    await self._settle_failed(routed, failed)
                    raise
                except Exception as bug:
                    raise await self._failed_unexpectedly(routed, bug) from bug
            except asyncio.CancelledError:
                if not self.admitted.was_cut():
                    raise
                # Charged as a caller leaving is (_complete_stream): what it delivered, or its worst case before it; or
                # whole, when the cut came as its answer's charge was on its way; or as its failure or fault settles it
                # (run on, shielded), when the cut came as that was on its way.
                raise await self._ended_by_cut(routed) from None
            finally:
                await self.charger.settle_unsettled(routed, routed.plan.order[0].model)

    async def SubmitBatch(self, request: router_pb2.SubmitLinesRequest, context: Any) -> router_pb2.SubmitLinesResponse:
        # Run to its end whatever the caller does: lines admitted and not sent would hold their budget a day.
        return await asyncio.shield(self.charger.run_to_end(self.deferred.submit(request, context)))

    async def FindDeferred(
        self, request: router_pb2.SubmitLinesRequest, context: Any
    ) -> router_pb2.SubmitLinesResponse:
        return await self.deferred.find(request, context)

    async def CollectBatch(
        self, request: router_pb2.CollectBatchRequest, context: Any
    ) -> router_pb2.CollectBatchResponse:
        return await asyncio.shield(self.charger.run_to_end(self.deferred.collect(request, context)))

    async def close(self) -> None:
        self.deferred.stop()  # before the charges are waited for: a collect's retries are not
        await self.admission.close()
        await self.charger.close()

    async def _route(
        self, request: router_pb2.CompleteRequest, context: Any, admit: bool = True, count: bool = False
    ) -> Routed:
        """Validate, route, and (last, so nothing after it can fail before serving) admit. `count`: a request never
        admitted (a Decide) is counted against the rate limit instead, before the classifier is asked. An account this
        router saw rate limited in the current window is refused before either, and a key named with a tenant it does
        not serve before any of it (key_tenants.py). The key is bound to the tenant named by the admission, or a
        Decide's count or answer: a request refused before (invalid, or as it is routed) takes no money, binds none."""
        account = admission.account_for(request)
        limits = await self.admission.limits(request)
        mode = escalation.mode_of(request.escalation, self.settings.escalation)
        verifier_threshold = escalation.verifier_threshold(request)
        await self.admission.key_tenants.refuse_if_another(account)
        self.admission.refuse_if_rate_limited(account)
        if count:
            await self.admission.count(account)
        plan, decision, registry = await self.routing.decide(request, limits, account, context.time_remaining())
        session = await self.sessions.get(account, request)
        kept = stick(dataclasses.replace(plan, reason=decision.reason), session, registry)  # its reason as decided
        if kept is not None:
            plan = kept
            decision.model, decision.reason, decision.session_affinity = kept.order[0].model.name, kept.reason, True
        caps = admission.output_caps(plan, limits, decision)
        request_id = request.request_id or uuid.uuid4().hex
        routed = Routed(request, request_id, account, limits, plan, decision, caps, registry=registry)
        routed.timeout_s, routed.session, routed.escalation = self.settings.request_timeout_s, session, mode
        routed.verifier_threshold = verifier_threshold
        if admit:
            await self._admit(routed)
        elif count:  # a Decide answered binds the key, as its count does where a rate limit is set
            await self.admission.key_tenants.check(account)
        return routed

    async def _admit(self, routed: Routed) -> None:
        """Admitted (counted as it is served): a fault from here on is settled (faults.py). One in the admission itself
        leaves nothing admitted (Admission._hold_under undoes what the store may have taken): told so, charged nothing,
        rather than a bare INTERNAL; pending, not retryable, when that undo failed too (the hold may remain)."""
        try:
            await self.admission.admit(routed)
        except ServiceError:
            raise
        except Exception as bug:
            log.error("unexpected failure after admission", exc_info=bug, extra={"request_id": routed.request_id})
            charge = faults.admission_fault_charge(bug)
            metrics.ROUTER_FAULTS.labels(charge).inc()
            undone = charge == "nothing"
            raise faults.fault_error(routed.request_id, Decimal(0) if undone else None, released=undone) from bug

    async def _refuse_if_cut(self, routed: Routed) -> None:
        """A call admitted once the drain's cut ran (it was being routed then) is not served: gRPC would cancel it at
        the grace's end with no details. Settled at nothing, its id released, and refused: a retry elsewhere is safe."""
        if not self.admitted.ran:
            return
        routed.failure, routed.note = "cancelled", "refused unserved: the router was shutting down"
        raise await self._ended_by_cut(routed)

    async def _ended_by_cut(self, routed: Routed) -> ServiceError:
        """The error of a call the drain's cut ends, telling what it was charged."""
        charged = await self._charged_when_cut(routed)
        return cut_error(routed.request_id, charged, routed.released)

    async def _charged_when_cut(self, routed: Routed) -> Decimal | None:
        """What a call the drain's cut ends was charged (Charger.charged). Its charge failing by a bug is told as any
        fault after admission is (pending): read in the cut's except clause, the bug was left to gRPC, a bare INTERNAL
        the edge let the SDKs retry as costing nothing."""
        try:
            return await self.charger.charged(routed, routed.plan.order[0].model)
        except ServiceError:
            raise
        except Exception as bug:
            raise await self._failed_unexpectedly(routed, bug) from bug

    async def _awaited_unless_cut(
        self, routed: Routed, work: asyncio.Task[router_pb2.CompleteResponse]
    ) -> router_pb2.CompleteResponse:
        """A call served to its end (unary, a buffered stream), awaited for its caller. Cut by the drain, it is told
        its outcome when its work ended in the cut's own turn; else SHUTTING_DOWN with its charge if that landed,
        pending if not."""
        try:
            return await _awaited_by_caller(routed, work)
        except asyncio.CancelledError:
            if not self.admitted.was_cut():
                raise
            if work.done():
                return work.result()  # its answer, or its failure (saying what it was charged)
            landed = charging.landed(routed)
            raise cut_error(routed.request_id, landed, landed is not None and routed.released) from None

    async def _complete_and_settle(self, routed: Routed, context: Any) -> router_pb2.CompleteResponse:
        try:
            return await self._complete(routed, context)
        except ServiceError as failed:
            await self._settle_failed(routed, failed)
            raise
        except Exception as bug:
            raise await self._failed_unexpectedly(routed, bug) from bug
        finally:
            await self.charger.settle_unsettled(routed, routed.plan.order[0].model)

    async def _failed_unexpectedly(self, routed: Routed, bug: Exception) -> ServiceError:
        """An admitted request that a bug of the router's failed (faults.py): settled at its hold unless its charge was
        made before the failure, logged, and the error telling its caller what it was charged."""
        log.error("unexpected failure after admission", exc_info=bug, extra={"request_id": routed.request_id})
        model = routed.plan.order[0].model
        charge = "earlier"
        try:
            if not routed.settled:
                routed.note = faults.AT_HOLD if routed.providers_asked else faults.UNSERVED
                charge = "hold" if routed.providers_asked else "nothing"
                await self.charger.settle_unknown(routed, model)
            charged = await self.charger.charged(routed, model)
            if routed.charged_before:  # its settlement met a charge made before (the reconciler's): not its own
                charge = "earlier"
        except Exception:  # the charge failed (the bug was its own, or it was kept nowhere): the reconciler charges it
            routed.settled = True  # so no clean-up settles it again, to fail once more in this error's stead
            charged, charge = None, "pending"
        finally:  # counted when the drain's cut cancels this too: its charge runs on, shielded, and is told by the cut
            metrics.ROUTER_FAULTS.labels(charge).inc()
        return faults.fault_error(routed.request_id, charged, routed.released)

    async def _settle_failed(self, routed: Routed, failed: ServiceError) -> None:
        """A request ending in an error is settled first, so the error says what it was charged (charged_usd): what
        its attempts cost, or what a cut stream delivered; or that its charge is pending when the ledger has one made
        before that this router could not read (cost_pending: the edge lets no retry charge it again). A bug in that
        settling is told as any after admission is (faults.py), not left a bare INTERNAL the edge would retry."""
        try:
            await self.charger.settle_unsettled(routed, routed.plan.order[0].model)
        except ServiceError:
            raise
        except Exception as bug:
            raise await self._failed_unexpectedly(routed, bug) from bug
        if routed.charged is None:
            failed.metadata["cost_pending"] = "true"
        elif routed.charged:
            failed.metadata["charged_usd"] = format(routed.charged, "f")

    async def _complete(self, routed: Routed, context: Any) -> router_pb2.CompleteResponse:
        self.routing.count(routed)
        cached = await self.cache.lookup(routed)
        if cached is not None:
            await self.charger.settle(routed, cached, "cache_hit")
            await self._after_hit(routed)
            return cached
        served = await self.serving.generate(routed, context)
        response = charging.response(routed, served)
        await self.charger.settle(routed, response, served=served)
        await self._after_turn(routed, served, response)
        return response

    async def _charge_partial(
        self, routed: Routed, stream: StreamState, outcome: str, failed: ServiceError | None
    ) -> None:
        """An interrupted or abandoned stream charged what reached its caller; cut in transit, its worst case."""
        partial = await stream.partial(routed, failed.metadata if failed is not None else {})
        stream.owe_unknown_rest(routed, failed, partial)
        await self.charger.settle(routed, charging.response(routed, partial), outcome, partial)

    async def _after_turn(
        self, routed: Routed, served: Served, response: router_pb2.CompleteResponse, streamed: bool = False
    ) -> None:
        await self.cache.put(routed, served, response, streamed)
        planned = routed.plan.order[0].model.name
        assert routed.registry is not None  # every routed request keeps the snapshot it was routed with
        await self.sessions.record(routed.account, routed.request, routed.session, planned, response, routed.registry)

    async def _after_hit(self, routed: Routed) -> None:
        planned = routed.plan.order[0].model.name
        assert routed.registry is not None  # every routed request keeps the snapshot it was routed with
        await self.sessions.record_hit(routed.account, routed.request, routed.session, planned, routed.registry)

    async def _buffered_stream(self, routed: Routed, context: Any) -> AsyncGenerator[router_pb2.CompleteChunk]:
        """Served as a unary call (escalation included) and like one, from the decision on, run to its end and
        settled by itself whatever the caller does: nothing else may release its hold while it generates."""
        work = self.charger.run_to_end(self._complete_and_settle(routed, context))
        yield router_pb2.CompleteChunk(decision=routed.decision)
        response = await self._awaited_unless_cut(routed, work)
        try:
            for chunk in [*taken_over(routed, response), *answer_chunks(response)]:
                with self.admitted.sending(cut_after=False):  # its answer generated and charged: nothing left to cut
                    yield chunk
        except Exception as bug:  # its work ended, settled: the error tells what it was charged (faults.py)
            try:
                fault = await self._failed_unexpectedly(routed, bug)
            except asyncio.CancelledError:  # the cut, as that charge was read: told as every cut call is
                if not self.admitted.was_cut():
                    raise
                fault = await self._ended_by_cut(routed)
            raise fault from bug

    async def _complete_stream(self, routed: Routed, context: Any) -> AsyncGenerator[router_pb2.CompleteChunk]:
        self.routing.count(routed)
        yield router_pb2.CompleteChunk(decision=routed.decision)
        cached = await self.cache.lookup(routed, streamed=True)
        if cached is not None:
            await self.charger.settle(routed, cached, "cache_hit")
            await self._after_hit(routed)
            for chunk in [*taken_over(routed, cached), *answer_chunks(cached)]:
                yield chunk
            return
        stream = StreamState(routed.plan.order[0].model)
        try:
            # aclosing: when the caller leaves, the provider stream is cancelled now, not at garbage collection.
            async with aclosing(self.serving.generate_stream(routed, context, stream)) as chunks:
                async for chunk in chunks:
                    yield chunk
            assert stream.served is not None  # generate_stream returns only with the final chunk, or raises
            response = charging.response(routed, stream.served)
            await self.charger.settle(routed, response, served=stream.served)
            streamed = could_escalate(routed, stream.served.model)  # else its answer is a unary call's too
            await self._after_turn(routed, stream.served, response, streamed)
            response.content, response.refusal = "", ""  # delivered in their chunks
            yield router_pb2.CompleteChunk(final=response)
        except (ServiceError, asyncio.CancelledError, GeneratorExit) as exc:
            outcome = "interrupted" if isinstance(exc, ServiceError) else "cancelled"
            # A caller that left while a failed providers call closed (closing waits on gRPC's writer over a channel
            # with interceptors) has CancelledError in the failure's stead: charged from the failure all the same.
            failed = exc if isinstance(exc, ServiceError) else stream.providers_failure(routed.request_id)
            if stream.served is not None and not routed.settled:
                # Whole, its final chunk read, when the caller left while the providers call was closing (closing waits
                # on gRPC's writer over a channel with interceptors): charged as served, not at what it owes alone.
                await self.charger.settle(routed, charging.response(routed, stream.served), outcome, stream.served)
            # Failed or abandoned mid-stream: what reached the caller was served and is charged once.
            elif stream.delivered and stream.served is None:
                # Counting what was delivered takes turns of the event loop: run to its end, shielded, and nothing
                # else may settle the request (at what it owes alone) while it runs.
                routed.settled = True
                routed.charging = self.charger.run_to_end(self._charge_partial(routed, stream, outcome, failed))
                await asyncio.shield(routed.charging)
            elif not stream.delivered and stream.served is None and not isinstance(exc, ServiceError):
                routed.failure = "cancelled"
                if failed is not None:  # what the failed attempt cost, as a caller who stayed owes it
                    stream.owe_failed_attempt(routed, failed)
                elif stream.cue.unreached:  # its providers call waited for the word to send: no upstream had it
                    routed.note = "the caller left before the upstream was reached: the attempt cost nothing"
                else:
                    # Left before the first token: what the upstream generated is unknown, so its worst case, on top
                    # of what the attempt's failed retries consumed.
                    routed.owed += stream.worst + stream.consumed_usd
            raise


async def _awaited_by_caller(
    routed: Routed, work: asyncio.Task[router_pb2.CompleteResponse]
) -> router_pb2.CompleteResponse:
    """The work of a call served to its end, awaited for its caller, shielded. A caller that leaves (the call cancelled,
    its deadline passed) is noted on the request: no escalation or fallback is started for it afterwards."""
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        routed.caller_left = True
        raise


class DecisionsTold:
    """A stream's decisions as its caller is told them: a decision after the first (another model taking over before
    the first delta) only to a caller that said it reads one (llmrouter/later_decisions.py)."""

    def __init__(self, later: bool) -> None:
        self.later = later
        self.decided = False

    def withheld(self, chunk: router_pb2.CompleteChunk) -> bool:
        if chunk.HasField("decision") and self.decided and not self.later:
            return True  # the final chunk names the model that answered, as a unary answer does
        self.decided = True
        return False


def taken_over(routed: Routed, response: router_pb2.CompleteResponse) -> list[router_pb2.CompleteChunk]:
    """Before a whole answer's chunks (buffered, or from the cache), a decision naming its model when that is not the
    one routed to (an escalation's, a fallback's), and saying it came from the response cache when it did (the
    cached answer's decision, cache.py): the stream is named and explained as the unstreamed answer is."""
    if response.cache_hit or (response.model and response.model != routed.decision.model):
        return [
            router_pb2.CompleteChunk(decision=answered_by(response.decision, response.model or routed.decision.model))
        ]
    return []


def answer_chunks(response: router_pb2.CompleteResponse) -> list[router_pb2.CompleteChunk]:
    """A whole answer (buffered, or from the cache) as a stream's chunks: its text and its refusal each in one piece,
    then the final chunk, whose content and refusal are then empty."""
    chunks = [router_pb2.CompleteChunk(delta=response.content)] if response.content else []
    if response.refusal:
        chunks.append(router_pb2.CompleteChunk(refusal_delta=response.refusal))
    response.content, response.refusal = "", ""
    return [*chunks, router_pb2.CompleteChunk(final=response)]
