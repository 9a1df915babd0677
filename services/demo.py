"""The routing demo `make run` prints: prompts of clearly different difficulty, each with the router's decision
over the whole registry (what it would choose with every provider's key, what it chose here and why), the
answer of the model it chose here, and a summary of what the run cost, what the cloud choices would have cost
and what always using the strongest model would have cost.

Nothing is made up: decisions come from the router's Decide RPC (POST /v1/router/decide), answers from the
model it routed to (without keys, the local model), prices from the registry applied to each answer's usage."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx

from llmrouter.cli.output import table
from llmrouter.registry import ModelSpec, Registry

PROMPTS = (
    ("trivial", "What is the capital of France?"),
    ("easy", "Translate 'thank you very much' into Spanish."),
    ("moderate", "Explain in two sentences why the sky is blue."),
    ("hard", "Prove that there are infinitely many prime numbers."),
    (
        "expert",
        "Derive the Black-Scholes price of a European call option from the PDE, stating every assumption and "
        "the boundary conditions.",
    ),
)
MAX_TOKENS = 96  # short answers keep the demo quick on a laptop's CPU


def strongest(registry: Registry) -> ModelSpec:
    """What 'always the strongest model' means: the highest tier, then the highest price."""
    return max(registry.models, key=lambda m: (registry.tier_rank(m), m.output_usd_per_mtok, m.input_usd_per_mtok))


def status(candidate: dict[str, Any], decision: dict[str, Any]) -> str:
    if candidate["model"] == decision["model"]:
        return "chosen here"
    if candidate["model"] == decision.get("model_with_every_provider"):
        return f"would be chosen with keys; {candidate['excluded_because']}"
    if candidate.get("excluded_because"):
        return str(candidate["excluded_because"])
    if candidate["predicted_quality"] < decision["quality_target"]:
        return "predicted below the quality target"
    return "meets the target, costs more"


def usd(amount: Decimal) -> str:
    return f"${amount:.6f}"


def charged(reply: httpx.Response) -> Decimal | None:
    """What the answer was charged (x-router-cost-usd); None when the router could not read it
    (x-router-cost-pending: the ledger has it, at most its hold), which the demo does not make up."""
    if reply.headers.get("x-router-cost-pending") == "true":
        return None
    return Decimal(reply.headers["x-router-cost-usd"])


def run_demo(base_url: str, registry: Registry) -> None:
    top = strongest(registry)
    totals = {"now": Decimal(0), "cloud": Decimal(0), "strongest": Decimal(0)}
    summary = []
    pending = 0  # answers whose cost the router could not tell: in no total
    with httpx.Client(base_url=f"{base_url}/v1", timeout=300) as http:
        for difficulty, prompt in PROMPTS:
            body = {"model": "auto", "messages": [{"role": "user", "content": prompt}], "max_tokens": MAX_TOKENS}
            decided = http.post("/router/decide", json=body)
            reply = http.post("/chat/completions", json=body)
            for response in (decided, reply):
                if response.status_code != 200:
                    print(
                        f"\n{response.request.method} {response.request.url} -> {response.status_code}: {response.text}"
                    )
                    raise SystemExit(1)
            decision, answer = decided.json(), reply.json()
            usage = answer["usage"]
            ideal_name = decision.get("model_with_every_provider") or decision["model"]
            ideal = registry.get(ideal_name)
            assert ideal is not None  # the router chose it from this registry
            now = charged(reply)
            cloud = ideal.cost_usd(usage["prompt_tokens"], usage["completion_tokens"])
            always = top.cost_usd(usage["prompt_tokens"], usage["completion_tokens"])
            pending += now is None
            totals["now"] += now or 0
            totals["cloud"] += cloud
            totals["strongest"] += always
            here = "pending" if now is None else usd(now)
            summary.append((difficulty, ideal_name, reply.headers["x-router-model"], here, usd(cloud), usd(always)))

            print(f"\n[{difficulty}] {prompt}")
            candidates = sorted(decision["candidates"], key=lambda c: Decimal(c["estimated_cost_usd"]))
            rows = [
                (c["model"], f"{c['predicted_quality']:.2f}", f"${c['estimated_cost_usd']}", status(c, decision))
                for c in candidates
            ]
            print(table(("model", "predicted quality", "est. cost", "decision"), rows))
            if decision.get("model_with_every_provider"):
                print(f"  with keys : {ideal_name}: {decision['reason_with_every_provider']}")
            print(f"  here      : {reply.headers['x-router-model']}: {reply.headers['x-router-reason']}")
            text = " ".join((answer["choices"][0]["message"]["content"] or "").split())
            print(f"  answer    : {text[:240]}{'...' if len(text) > 240 else ''}")
            print(f"  usage     : {usage['prompt_tokens']} in, {usage['completion_tokens']} out")

    print("\nSummary (each answer's usage priced from config/models.yaml)")
    headers = ("prompt", "with keys", "here", "cost here", "with keys", f"always {top.name}")
    print(table(headers, [*summary, ("total", "", "", *(usd(v) for v in totals.values()))]))
    saved = totals["strongest"] - totals["cloud"]
    share = saved / totals["strongest"] if totals["strongest"] else Decimal(0)
    unknown = f", and {pending} answer(s) whose cost is pending (in the ledger, at most its hold)" if pending else ""
    print(
        f"Routing with keys would cost {usd(totals['cloud'])} against {usd(totals['strongest'])} for always "
        f"{top.name}: {usd(saved)} saved ({share:.0%}). This run cost {usd(totals['now'])}{unknown}."
    )
