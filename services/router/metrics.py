"""Router metrics, named as docs/conventions.md lists them (dashboards and alerts depend on the names)."""

from decimal import Decimal
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("llmrouter_router_requests_total", "Routed requests", ["model", "reason", "outcome"])
COST = Counter("llmrouter_router_cost_usd_total", "USD charged", ["model"])
BASELINE_COST = Counter(
    "llmrouter_router_baseline_cost_usd_total", "USD the strongest available model would have cost for the same usage"
)
# Counters only go up: what a reconciled charge gave back (its router's charge or undo landing after it, from an
# outbox) is counted here, by the model the reconciled charge was counted under. The cost charged is the cost counter
# less this one, the baseline the baseline counter less it (a reconciled charge claims no savings), per model.
COST_GIVEN_BACK = Counter(
    "llmrouter_router_cost_given_back_usd_total",
    "USD of reconciled charges given back (their router's charge or undo landed after them)",
    ["model"],
)
TOKENS = Counter(
    "llmrouter_router_tokens_total",
    "Tokens of charged generations, by the model that generated them (none for a cache hit)",
    ["model", "direction"],
)
ESCALATIONS = Counter("llmrouter_router_escalations_total", "Weak answers escalated", ["from_model", "to_model"])
VERIFIER = Counter(
    "llmrouter_router_verifier_total",
    "Answers put to the verifier, by outcome: kept, doubted, uncalibrated, unavailable, timeout",
    ["outcome"],
)
FALLBACKS = Counter("llmrouter_router_fallbacks_total", "Provider failures routed around", ["from_model", "to_model"])
CACHE = Counter("llmrouter_router_cache_requests_total", "Response cache lookups", ["result"])
SCORE_CACHE = Counter("llmrouter_router_score_cache_requests_total", "Classifier score cache lookups", ["result"])
BUDGET_REJECTIONS = Counter(
    "llmrouter_router_budget_rejections_total",
    "Requests refused for an exhausted budget, by tenant (as routed_total) and the scope of the budget that refused: "
    "tenant or key",
    ["tenant", "scope"],
)
RATE_LIMITED = Counter("llmrouter_router_rate_limited_total", "Requests refused by the rate limit")
STORE_UP = Gauge("llmrouter_router_store_up", "1 when the router reaches the store, else 0", ["store"])
HOLD_TOTALS_TRUSTED = Gauge(
    "llmrouter_router_hold_totals_trusted",
    "1 when admission counts a budget's holds by their running totals, 0 by a scan of every hold in flight "
    "(ROUTER_HOLD_TOTALS=maintain, or auto while a router of a version keeping no totals is alive)",
)
MONEY_CLOCK_OFFSET = Gauge(
    "llmrouter_router_money_clock_offset_seconds",
    "The money Redis' clock less this router's, as last read (money is dated by the money Redis' clock; the ledger's "
    "times and logs by the router's own)",
)
STORE_MEMORY = Gauge(
    "llmrouter_router_store_memory_ratio",
    "Memory the store's Redis uses against its maxmemory, its fullest master's on a cluster, of those that answer "
    "(NaN: no maxmemory)",
    ["store"],
)
STORE_MASTERS_UNREACHABLE = Gauge(
    "llmrouter_router_store_masters_unreachable",
    "Masters of the store's Redis Cluster that did not answer the router's last read of them: their slots' keys (the "
    "money of the tenants they hold) cannot be used meanwhile, while the other masters serve theirs (0 on one server)",
    ["store"],
)
# How an admitted request that an unexpected failure (a bug) in the router ended was charged (faults.py): a fixed
# set, so the series stay bounded.
FAULT_CHARGES = ("hold", "nothing", "earlier", "pending")
ROUTER_FAULTS = Counter(
    "llmrouter_router_faults_total",
    "Requests ended by an unexpected failure (a bug) in the router once admitted or in their admission, told INTERNAL "
    "INTERNAL_ERROR, by how they were charged: hold (a providers call may have run), nothing (none had: its id "
    "released), earlier (a charge had landed before the failure, the reconciler's too) or pending (the charge itself "
    "failed, or the undo of an admission the bug failed: the reconciler charges the hold)",
    ["charge"],
)
for _charge in FAULT_CHARGES:
    ROUTER_FAULTS.labels(_charge)  # each series from 0, so increase() sees the first fault
PENDING_RECONCILED = Counter(
    "llmrouter_router_reconciled_charges_total", "Pending charges of dead routers settled at their hold"
)
CHARGES_CAPPED = Counter(
    "llmrouter_router_charges_capped_total",
    "Charges capped at their hold: the usage the providers reported cost more than the request's or batch line's worst "
    "case",
    ["model"],
)
CAPPED_USD = Counter(
    "llmrouter_router_capped_usd_total",
    "USD of reported usage past the hold that capped charges did not charge (the reported cost less the hold, at most "
    "9.2M a charge): the operator pays it",
    ["model"],
)
BATCH_OUTPUT_PAST_MAX_TOKENS = Counter(
    "llmrouter_router_batch_output_past_max_tokens_total",
    "Provider Batch API lines whose provider reported more output than the max_tokens they were sent: charged "
    "max_tokens, flagged estimated (once a charge)",
    ["model"],
)
RECONCILE_FAILURES = Counter(
    "llmrouter_router_reconcile_failures_total",
    "Pending charges due to be settled at their hold that the reconciler could not settle (swept again next round), "
    "shards whose list of uncounted charges its sweep could not read (read again next round), and entries of those "
    "lists whose own keys hold another type (moved behind the others, swept again once the sweep comes round), and "
    "charges whose count a take took but never heard back within TAKEN_KEPT_S (given up: in the ledger, in no router's "
    "usage metrics)",
)
# Why a sweep drops an entry of a shard's list of uncounted charges (keys.py, uncounted_reconciled) that no router
# wrote: a fixed set, so the series stay bounded whatever the entries hold.
UNCOUNTED_DROPPED_WHY = ("unreadable", "other_shard")
UNCOUNTED_ENTRIES_DROPPED = Counter(
    "llmrouter_router_uncounted_entries_dropped_total",
    "Entries of the shards' lists of uncounted charges that the reconciler's sweep dropped, no router having written "
    "them (hand-edited), by why: unreadable (not text, no charge id, or a field that is no [tenant, request id]) or "
    "other_shard (a tenant of another shard, whose keys the shard's take cannot reach)",
    ["why"],
)
for _why in UNCOUNTED_DROPPED_WHY:
    UNCOUNTED_ENTRIES_DROPPED.labels(_why)  # each series from 0, so increase() sees the first drop
LEDGER_REJECTED = Counter(
    "llmrouter_router_ledger_rejected_total",
    "Ledger entries the SQL sink could not copy as rows (unreadable: not JSON, or nested deeper than 64 levels; or "
    "refused), kept whole in ledger_rejected",
)
LEDGER_SINK_LAST_SUCCESS = Gauge(
    "llmrouter_router_ledger_sink_last_success_timestamp_seconds",
    "When this router's SQL sink last copied all it read (or found nothing to copy), or started: 0 without a sink",
)
LEDGER_SINK_BACKLOG_AGE = Gauge(
    "llmrouter_router_ledger_sink_backlog_age_seconds",
    "Age of the oldest ledger entry the SQL sink has not copied (not read yet, or read and not committed), over every "
    "shard, read by this router's sink every 15 s: 0 when none waits or without a sink, NaN while it cannot be read",
)
LEDGER_SINK_ROWS = Counter(
    "llmrouter_router_ledger_sink_rows_written_total",
    "Rows the SQL sink committed to the ledger table (an entry delivered again is no new row)",
)
LEDGER_SINK_FAILURES = Counter(
    "llmrouter_router_ledger_sink_failures_total",
    "Rounds of the SQL sink that failed and are retried, by stage: read (the ledger streams), write (the SQL ledger's "
    "commit), ack (acknowledging entries whose rows were committed)",
    ["stage"],
)
for _stage in ("read", "write", "ack"):
    LEDGER_SINK_FAILURES.labels(_stage)  # each series from 0, so increase() sees the first failure
LEDGER_SINK_BACKLOG_ENTRIES = Gauge(
    "llmrouter_router_ledger_sink_backlog_entries",
    "Ledger entries the SQL sink has not copied, over every shard, by state: pending (read by a sink, row not "
    "committed) or unread (not read yet; NaN when Redis cannot count them); read with the backlog's age",
    ["state"],
)
# What the SQL sink reports, in a router or on its own (`python -m services.ledger sink`, which serves these alone).
SINK_METRICS = (
    LEDGER_REJECTED,
    LEDGER_SINK_LAST_SUCCESS,
    LEDGER_SINK_BACKLOG_AGE,
    LEDGER_SINK_ROWS,
    LEDGER_SINK_FAILURES,
    LEDGER_SINK_BACKLOG_ENTRIES,
)
RECONCILE_UNLEASED = Counter(
    "llmrouter_router_reconcile_rounds_unleased_total",
    "Reconcile rounds that could not ask for the reconciler's lease, the Redis Cluster master of its slot "
    "({llmrouter}) not answering: no pending charge was swept, nor uncounted charge counted, that round",
)
RECONCILE_BACKLOG = Gauge(
    "llmrouter_router_reconcile_backlog_charges",
    "Pending charges whose router is gone (dead, or within the grace before the reconciler takes it for dead) or that "
    "are due at their hold, left unsettled by the reconciler's last sweep: 0 on a router not holding its lease",
)
# A round of the upkeep (heartbeat, outbox replay, reconciler: upkeep.py) that runs long keeps its router beating, so
# nothing else shows one that hangs: its start as a timestamp, which a scrape reads right while the loop itself is
# stuck, and the heartbeat's TTL, which the alert counts its age in.
UPKEEP_ROUND_STARTED = Gauge(
    "llmrouter_router_upkeep_round_started_timestamp_seconds",
    "When the upkeep round under way began (Unix time): 0 while none runs",
)
HEARTBEAT_TTL = Gauge(
    "llmrouter_router_heartbeat_ttl_seconds",
    "The heartbeat's TTL (ROUTER_HEARTBEAT_TTL_S): a router not beating for that long is taken for dead",
)
OUTBOX = Gauge(
    "llmrouter_router_outbox_charges", "Charges and undos of lost admissions waiting in the outbox for the money store"
)
# Set as each entry of a replay is tried: a long replay (an outage's charges, one store call each) tells its progress
# from a hang, which the outbox gauge, set as a replay ends, cannot.
OUTBOX_REPLAY_REMAINING = Gauge(
    "llmrouter_router_outbox_replay_remaining_charges",
    "Outbox charges and undos the replay under way has yet to try: falling while it lands them, flat while it is stuck "
    "on one; 0 while no replay runs",
)
OUTBOX_DEAD_LETTERS = Gauge(
    "llmrouter_router_outbox_dead_letters",
    "Outbox charges and undos that kept failing, or could not be read, waiting unlanded in the dead-letter file",
)
ROUTED = Counter(
    "llmrouter_router_routed_total",
    "Auto-routed requests admitted and served (not those a drain refused unserved), by tenant (the first N seen, "
    "then 'other') and the chosen model's tier",
    ["tenant", "tier"],
)
QUALITY_KEPT = Histogram(
    "llmrouter_router_quality_kept_ratio",
    "Auto-routed requests admitted with the classifier's predictions: the chosen model's predicted quality over the "
    "best candidate's, by tenant (as routed_total)",
    ["tenant"],
    buckets=(0.5, 0.7, 0.8, 0.85, 0.9, 0.95, 0.97, 0.99, 1.0),
)


def count_charge(record: dict[str, Any]) -> None:
    """A charge, from its ledger record, in the request, cost and token counters: every charge the ledger holds (a
    request's, a Batch API line's, one the reconciler settled at its hold) is counted once, by the router that made
    it, so what dashboards sum is what the ledger sums."""
    model = str(record.get("model", ""))
    REQUESTS.labels(model, str(record.get("reason", "")), str(record.get("outcome", ""))).inc()
    COST.labels(model).inc(float(Decimal(record["cost_usd"])))
    BASELINE_COST.inc(float(Decimal(record.get("baseline_cost_usd") or record["cost_usd"])))
    # Tokens generated, each by the model that generated them: none for a cache hit (its caller is shown the cached
    # answer's usage), an escalated answer's weak generation under the weak model.
    for generation in record.get("generations", []):
        TOKENS.labels(generation["model"], "input").inc(generation["input_tokens"])
        TOKENS.labels(generation["model"], "output").inc(generation["output_tokens"])


# The most tokens one generation's count says (a provider's int64): past what a float holds, a counter's inc raises.
TOKEN_COUNT_MAX = 2**63 - 1


def countable(record: dict[str, Any]) -> bool:
    """Whether count_charge counts `record` whole, as a router builds it: one hand-edited (a cost missing or no finite
    amount of at least nothing, a generation without its model or token counts, or a count past TOKEN_COUNT_MAX)
    would fail it part way, counted in part."""
    try:
        amounts = [Decimal(record["cost_usd"]), Decimal(record.get("baseline_cost_usd") or record["cost_usd"])]
        generations = record.get("generations", [])
        if not isinstance(generations, list):
            return False
        models = [g["model"] for g in generations]
        counts = [n for g in generations for n in (g["input_tokens"], g["output_tokens"])]
    except (KeyError, TypeError, ValueError, ArithmeticError):
        return False
    return (
        all(amount.is_finite() and amount >= 0 for amount in amounts)
        and all(isinstance(model, str) for model in models)
        and all(type(n) is int and 0 <= n <= TOKEN_COUNT_MAX for n in counts)
    )


def count_given_back(record: dict[str, Any], pico: int) -> None:
    """`pico` of a reconciled charge given back, under the model its ledger record (the reconciled charge's) names."""
    COST_GIVEN_BACK.labels(str(record.get("model", ""))).inc(float(Decimal(pico).scaleb(-12)))


class BoundedLabels:
    """A tenant label per tenant for the first `limit` tenants seen, 'other' for the rest: the series stay
    bounded whatever tenant names callers send."""

    OTHER = "other"

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: set[str] = set()

    def label(self, tenant: str) -> str:
        if tenant in self._seen:
            return tenant
        if len(self._seen) < self.limit and tenant != self.OTHER:
            self._seen.add(tenant)
            return tenant
        return self.OTHER


# Budget use, bounded: two scopes, two thresholds, whatever the number of tenants and keys.
BUDGET_USE = Gauge(
    "llmrouter_router_budget_use_ratio", "Highest share of its limit any budget of the scope has spent", ["scope"]
)
BUDGETS_OVER = Gauge(
    "llmrouter_router_budgets_over_threshold",
    "Budgets that spent at least a share of their limit",
    ["scope", "threshold"],
)
