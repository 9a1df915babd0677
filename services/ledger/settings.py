"""The SQL ledger's settings (ROUTER_LEDGER_SQL_*, and ROUTER_REDIS_URL for a sink): part of the router's, and all
that the ledger's commands (`python -m services.ledger`, `llmrouter ledger export`, `python -m
services.router.ledger`, the chart's ledger-trim CronJob) and the operator's commands on the money Redis
(services/router/money_check.py, money_store: `python -m services.router.key_move`...) read. Those serve nothing, so
they need none of the router's server settings (its certificates above all)."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from llmrouter.private_paths import default_path
from llmrouter.redis_url import RedisUrl
from llmrouter.settings import RepoPath

# More than any master has: a count past what Redis WAIT takes (a 64-bit integer) would be refused once a key move
# was written.
MAX_KEY_MOVE_REPLICAS = 100


class LedgerSettings(BaseSettings):
    # hide_input_in_errors: as llmrouter.settings.ServiceSettings (a Redis URL holds its password)
    model_config = SettingsConfigDict(env_prefix="ROUTER_", extra="ignore", frozen=True, hide_input_in_errors=True)

    # The money store whose ledger stream the sink copies (the router's; unset: its in-process store).
    redis_url: RedisUrl | None = None  # its password masked when shown (llmrouter/redis_url.py)
    # The SQL ledger (services/ledger): a sink in the router copies every charge from the ledger stream into
    # it; Stats reads it. PostgreSQL when the DSN is set, else the SQLite file: by default in this user's own
    # directory under the temp directory (<tempdir>/llmrouter-<uid>/ledger.sqlite3, the directory made 0700, the file
    # 0600). It holds every tenant's charges, so opening it refuses a file (or its -wal, -shm, -journal) of another
    # user's, a symbolic link, or one others may write (one of this user's they may only read is made private); below
    # the temp directory its group too, and every directory on the way (llmrouter/private_paths.py has the rules).
    ledger_sql_sink: bool = True
    ledger_sql_dsn: SecretStr = SecretStr("")
    ledger_sql_path: RepoPath = default_path("ledger.sqlite3")
    # Rows older than this many days are deleted by the sink (hourly) and by `python -m services.ledger trim`, but
    # each account's (tenant, key id) newest, which Budgets and the budget alerts list it by; 0 keeps them forever.
    ledger_sql_retention_days: float = Field(default=0, ge=0)
    # A SQLite ledger past this many MiB has its oldest rows deleted (but each account's newest), so the file stops
    # growing (0: unbounded; PostgreSQL: ignored). A retention by size, as the one above is by age: the durable
    # record is the ledger stream and its exports. The file passes it by ~0.5 MiB at most, and its write-ahead log
    # takes ~4 MiB more (services/ledger/db.py): leave that room on its volume.
    ledger_sql_max_mib: int = Field(default=0, ge=0)
    # Ledger stream entries older than this are trimmed by `python -m services.router.ledger trim` (exported
    # first, or with --copied-only once the sink has copied them).
    ledger_retention_days: int = Field(default=90, gt=0)
    # A sink's pending entries idle this long are claimed by another sink (its consumer died).
    ledger_sql_claim_idle_s: float = Field(default=60.0, gt=0)
    # The standalone sink (`python -m services.ledger sink`) serves its Prometheus metrics here (0: none), as the
    # services do theirs (docs/conventions.md, Ports): what it copied, its failures and its backlog. A router's own
    # sink reports the same metrics on the router's port.
    ledger_sink_metrics_port: int = Field(default=9105, ge=0, le=65535)
    ledger_sink_metrics_host: str = "127.0.0.1"
    # How many replicas of each master of the money Redis `python -m services.router.key_move` waits for by default
    # (its --replicas, which overrides this): set once where that Redis has replicas (the chart's router.env), so that
    # every move run in a router pod waits until a failover can no longer lose it. The router itself does not use it.
    key_move_replicas: int = Field(default=0, ge=0, le=MAX_KEY_MOVE_REPLICAS)
