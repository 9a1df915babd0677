"""Without the SQL ledger in PostgreSQL the ledger streams are the only record, and `trim --out FILE` is how they are
trimmed; a Job of the user's own cannot run it against the in-chart money Redis (its network policy admits the chart's
components alone, its password is in the chart's Secret). router.ledgerTrim.archive.existingClaim has the chart's own
CronJob run it, onto that claim. The rendered manifests, by the real helm (deploy/install-tools.sh)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from .support import CHART, by_kind, render
from .test_chart import _callers, _notes, env, name

ARCHIVE = ("--set", "router.ledgerTrim.archive.existingClaim=ledger-archive")
DSN = ("--set", "router.ledgerDsnSecret.name=llm-ledger", "--set", "router.ledgerDsnSecret.key=dsn")


def trim_pod(docs: list[dict]) -> dict:
    return by_kind(docs, "CronJob")[name("ledger-trim")]["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def test_with_an_archive_claim_the_charts_cronjob_trims_into_a_file_on_it() -> None:
    docs = render(*ARCHIVE, "--set", "router.ledgerTrim.retentionDays=30")
    pod = trim_pod(docs)
    (trim,) = pod["containers"]
    assert trim["command"][:4] == ["python", "-m", "services.router.ledger", "trim"]
    # One file per month of the entries, ledger-trimmed.jsonl the lock; the run fails with the volume 80% full.
    assert trim["command"][4:] == ["--out", "/archive/ledger-trimmed.jsonl", "--monthly", "--min-free-percent", "20"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in trim["volumeMounts"]}
    archive = mounts["/archive"]
    assert not archive.get("readOnly") and volumes[archive["name"]]["persistentVolumeClaim"] == {
        "claimName": "ledger-archive"
    }
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]  # the claim is writable to it
    # The money Redis as the router reaches it (its password from the chart's Secret), and the router keeps the same
    # days, so that what it reads of the streams is what the trim leaves.
    trim_env = {e["name"]: e.get("value", e.get("valueFrom")) for e in trim["env"]}
    router = env(docs, "router")
    assert trim_env == {
        "REDIS_MONEY_PASSWORD": router["REDIS_MONEY_PASSWORD"],
        "ROUTER_REDIS_URL": router["ROUTER_REDIS_URL"],
        "ROUTER_LEDGER_RETENTION_DAYS": "30",
    }
    assert router["ROUTER_LEDGER_RETENTION_DAYS"] == "30"
    # The money Redis' network policy admits its pods, and the notes no longer say nothing trims the ledger.
    callers = _callers(by_kind(docs, "NetworkPolicy")[name("redis-money")])
    assert callers is not None
    components = [p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in callers]
    assert components == ["router", "ledger-trim"]
    assert "nothing trims the ledger" not in _notes(*ARCHIVE, "--set", "edge.allowAnonymous=true")
    # Its failure pages as the other trim's does.
    (rule,) = by_kind(docs, "PrometheusRule").values()
    assert "llmrouter.ledger" in [g["name"] for g in rule["spec"]["groups"]]


def test_the_archive_file_is_named_on_the_claim() -> None:
    docs = render(*ARCHIVE, "--set", "router.ledgerTrim.archive.file=ledger-2026.jsonl")
    (trim,) = trim_pod(docs)["containers"]
    assert trim["command"][4:6] == ["--out", "/archive/ledger-2026.jsonl"]
    with pytest.raises(subprocess.CalledProcessError) as outside:
        render(*ARCHIVE, "--set", "router.ledgerTrim.archive.file=../etc/ledger.jsonl")
    assert "/router/ledgerTrim/archive/file" in outside.value.stderr


def test_without_a_claim_or_the_sql_ledger_there_is_no_cronjob_and_the_notes_say_how() -> None:
    assert not by_kind(render(), "CronJob")
    notes = _notes("--set", "edge.allowAnonymous=true")
    assert "nothing trims the ledger" in notes and "router.ledgerTrim.archive.existingClaim" in notes


def test_with_the_sql_ledger_the_trim_copies_nothing_and_an_archive_claim_is_refused() -> None:
    (trim,) = trim_pod(render(*DSN))["containers"]
    assert trim["command"][-1] == "--copied-only" and "archive" not in {m["name"] for m in trim["volumeMounts"]}
    with pytest.raises(subprocess.CalledProcessError) as both:
        render(*DSN, *ARCHIVE)
    assert "router.ledgerTrim.archive.existingClaim: with router.ledgerDsnSecret" in both.value.stderr


def test_the_archive_rotation_and_the_free_space_check_can_be_turned_off() -> None:
    """monthly false: every run appends to the one file, as before rotation; minFreePercent 0: no check. Anything
    but a share of the volume is refused by the schema at `helm template`, not by the trim's usage error a day later."""
    docs = render(*ARCHIVE, "--set", "router.ledgerTrim.archive.monthly=false")
    assert trim_pod(docs)["containers"][0]["command"][4:] == [
        "--out",
        "/archive/ledger-trimmed.jsonl",
        "--min-free-percent",
        "20",
    ]
    docs = render(*ARCHIVE, "--set", "router.ledgerTrim.archive.minFreePercent=0")
    assert trim_pod(docs)["containers"][0]["command"][4:] == ["--out", "/archive/ledger-trimmed.jsonl", "--monthly"]
    docs = render(*ARCHIVE, "--set-json", "router.ledgerTrim.archive.minFreePercent=12.5")
    assert trim_pod(docs)["containers"][0]["command"][-2:] == ["--min-free-percent", "12.5"]
    for wrong in ("101", "-1", '"full"'):
        with pytest.raises(subprocess.CalledProcessError) as refused:
            render(*ARCHIVE, "--set-json", f"router.ledgerTrim.archive.minFreePercent={wrong}")
        assert "/router/ledgerTrim/archive/minFreePercent" in refused.value.stderr
    # A string would be true to the template: "false" would rotate.
    with pytest.raises(subprocess.CalledProcessError) as refused:
        render(*ARCHIVE, "--set-json", 'router.ledgerTrim.archive.monthly="false"')
    assert "/router/ledgerTrim/archive/monthly" in refused.value.stderr


def test_an_upgrade_reusing_the_values_of_the_chart_before_rotation_rotates_and_checks_the_free_space(
    tmp_path: Path,
) -> None:
    """`helm upgrade --reuse-values` renders this chart's templates with the values of the release's chart, the one
    before (its values.yaml and the user's, not this values.yaml: Helm's action.Upgrade.reuseValues), which had no
    archive.monthly nor minFreePercent: the schema takes them absent and the CronJob runs as on an install, with
    values.yaml's defaults. Here that chart's values are this chart's without those two keys."""
    before = shutil.copytree(CHART, tmp_path / "llm-cost-router")
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for key in ("monthly", "minFreePercent"):
        del values["router"]["ledgerTrim"]["archive"][key]
    (before / "values.yaml").write_text(yaml.safe_dump(values))
    user = (*ARCHIVE, "--set", "router.ledgerTrim.archive.file=ledger-2026.jsonl")

    reused = trim_pod(render(*user, chart=before))["containers"][0]["command"]

    assert reused == trim_pod(render(*user))["containers"][0]["command"]
    assert reused[4:] == ["--out", "/archive/ledger-2026.jsonl", "--monthly", "--min-free-percent", "20"]
    # What the user sets over them is kept, off included.
    off = ("--set", "router.ledgerTrim.archive.monthly=false", "--set", "router.ledgerTrim.archive.minFreePercent=0")
    assert trim_pod(render(*user, *off, chart=before))["containers"][0]["command"][4:] == [
        "--out",
        "/archive/ledger-2026.jsonl",
    ]
