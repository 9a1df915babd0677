# --- cluster ---------------------------------------------------------------------------------------------------
variable "namespace" {
  description = "Namespace of the release."
  type        = string
  default     = "llm-cost-router"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.namespace))
    error_message = "namespace must be a DNS-1123 label: lower-case letters, digits and '-', at most 63 characters."
  }
}

variable "create_namespace" {
  description = "Create the namespace (with the restricted Pod Security Standard enforced); false when it exists."
  type        = bool
  default     = true
}

# --- release -------------------------------------------------------------------------------------------------
variable "release_name" {
  description = "Helm release name; object names start with it."
  type        = string
  default     = "llm-cost-router"

  # It is the chart's fullnameOverride, which starts every Service's name: a DNS label, starting with a letter.
  validation {
    condition     = can(regex("^[a-z]([-a-z0-9]{0,51}[a-z0-9])?$", var.release_name))
    error_message = "release_name must be a DNS-1035 label of at most 53 characters: lower-case letters, digits and '-', starting with a letter."
  }
}

variable "chart_path" {
  description = "Path of the chart; defaults to the one in this repository. A chart directory: the module reads its values.yaml for the edge_endpoint output (a packaged .tgz leaves that null unless extra_values give edge.port)."
  type        = string
  default     = null
}

variable "image" {
  description = "Image of the four services: repository plus a tag or a sha256 digest (the digest wins)."
  type = object({
    repository = string
    tag        = optional(string, "")
    digest     = optional(string, "")
  })
  default = {
    repository = "ghcr.io/llm-cost-router/llm-cost-router"
  }

  # The chart's schema refuses an empty repository, Kubernetes one with spaces around it.
  validation {
    condition     = var.image.repository != "" && trimspace(var.image.repository) == var.image.repository
    error_message = "image.repository must be an image repository, e.g. ghcr.io/llm-cost-router/llm-cost-router."
  }
  validation {
    condition     = var.image.tag != "latest"
    error_message = "image.tag must not be \"latest\": pin a version or a digest."
  }
  validation {
    condition     = var.image.digest == "" || can(regex("^sha256:[a-f0-9]{64}$", var.image.digest))
    error_message = "image.digest must look like sha256:<64 hex digits>."
  }
}

variable "autoscaling" {
  description = "HPA bounds per service (edge, router, classifier, providers); services left out keep the chart's."
  type = map(object({
    min_replicas = number
    max_replicas = number
  }))
  default = {}

  validation {
    condition     = alltrue([for name in keys(var.autoscaling) : contains(["edge", "router", "classifier", "providers"], name)])
    error_message = "autoscaling keys must be among edge, router, classifier, providers."
  }
  validation {
    condition     = alltrue([for a in values(var.autoscaling) : a.min_replicas >= 1 && a.min_replicas <= a.max_replicas])
    error_message = "autoscaling: need 1 <= min_replicas <= max_replicas."
  }
  # The chart's schema takes whole numbers only: a fraction would pass the plan and stop `helm install` mid-apply.
  validation {
    condition     = alltrue([for a in values(var.autoscaling) : floor(a.min_replicas) == a.min_replicas && floor(a.max_replicas) == a.max_replicas])
    error_message = "autoscaling: min_replicas and max_replicas must be whole numbers."
  }
}

# --- secrets: referenced by name, never passed in (Terraform state holds no key, Redis URL or DSN) -------------
variable "provider_keys_secret" {
  description = "Existing Secret with the provider API keys, one key per registry api_key_env name (OPENAI_API_KEY, ANTHROPIC_API_KEY, ...), mounted as files into the providers pods; a provider without a key is not offered."
  type        = string
  default     = "llm-provider-keys"

  validation {
    condition     = can(regex("^[a-z0-9]([-.a-z0-9]{0,251}[a-z0-9])?$", var.provider_keys_secret))
    error_message = "provider_keys_secret must be a Secret name (DNS-1123 subdomain)."
  }
}

variable "edge_keys_secret" {
  description = "Existing Secret whose key `api-keys` lists the client keys the edge accepts (one \"<tenant> <sha256 hex of the key>\" per line). null: every caller is served as one anonymous tenant, which allow_anonymous_edge must then say on purpose."
  type        = string
  default     = "llm-edge-keys"

  validation {
    condition     = var.edge_keys_secret == null || can(regex("^[a-z0-9]([-.a-z0-9]{0,251}[a-z0-9])?$", var.edge_keys_secret))
    error_message = "edge_keys_secret must be a Secret name (DNS-1123 subdomain)."
  }
}

variable "allow_anonymous_edge" {
  description = "Serve callers without a key (one anonymous tenant). Only for a private edge: it spends the provider keys for anyone who can reach it."
  type        = bool
  default     = false

  validation {
    condition     = var.allow_anonymous_edge || var.edge_keys_secret != null
    error_message = "edge_keys_secret is null: set allow_anonymous_edge = true to serve every caller as one tenant, on purpose."
  }
}

variable "money_redis_secret" {
  description = "Existing Secret holding the URL of an external money Redis (spend, holds, request ids, ledger; it must be noeviction and persistent): {name, key}. null runs the chart's own (AOF on a volume)."
  type = object({
    name = string
    key  = optional(string, "url")
  })
  default = null

  # The chart refuses an empty name or key (its schema), and Kubernetes a name that is no Secret's.
  validation {
    condition     = var.money_redis_secret == null || can(regex("^[a-z0-9]([-.a-z0-9]{0,251}[a-z0-9])?$", var.money_redis_secret.name))
    error_message = "money_redis_secret.name must be a Secret name (DNS-1123 subdomain)."
  }
  validation {
    condition     = var.money_redis_secret == null || can(regex("^[-._a-zA-Z0-9]{1,253}$", var.money_redis_secret.key))
    error_message = "money_redis_secret.key must be a Secret key: letters, digits, '-', '_' and '.'."
  }
}

variable "cache_redis_secret" {
  description = "Existing Secret holding the URL of an external cache Redis (allkeys-lru is right for it): {name, key}. null runs the chart's own."
  type = object({
    name = string
    key  = optional(string, "url")
  })
  default = null

  # The chart refuses an empty name or key (its schema), and Kubernetes a name that is no Secret's.
  validation {
    condition     = var.cache_redis_secret == null || can(regex("^[a-z0-9]([-.a-z0-9]{0,251}[a-z0-9])?$", var.cache_redis_secret.name))
    error_message = "cache_redis_secret.name must be a Secret name (DNS-1123 subdomain)."
  }
  validation {
    condition     = var.cache_redis_secret == null || can(regex("^[-._a-zA-Z0-9]{1,253}$", var.cache_redis_secret.key))
    error_message = "cache_redis_secret.key must be a Secret key: letters, digits, '-', '_' and '.'."
  }
}

variable "batches_redis_secret" {
  description = "Existing Secret holding the URL of an external batch Redis (the edge's Batch API files, batches and results; it must be noeviction and persistent, and apart from the money Redis, which uploads would fill): {name, key}. null runs the chart's own (AOF on a volume)."
  type = object({
    name = string
    key  = optional(string, "url")
  })
  default = null

  # The chart refuses an empty name or key (its schema), and Kubernetes a name that is no Secret's.
  validation {
    condition     = var.batches_redis_secret == null || can(regex("^[a-z0-9]([-.a-z0-9]{0,251}[a-z0-9])?$", var.batches_redis_secret.name))
    error_message = "batches_redis_secret.name must be a Secret name (DNS-1123 subdomain)."
  }
  validation {
    condition     = var.batches_redis_secret == null || can(regex("^[-._a-zA-Z0-9]{1,253}$", var.batches_redis_secret.key))
    error_message = "batches_redis_secret.key must be a Secret key: letters, digits, '-', '_' and '.'."
  }
}

variable "redis_password_secret" {
  description = "Existing Secret holding the passwords the chart's own Redis require, one key per role: {name, keys = {money, cache, batches}} (each key defaults to the role's name; the edge is given only the batches one). Each password at least 16 of A-Z a-z 0-9 . _ ~ - (the callers' redis:// URLs carry it unescaped). null: the chart makes its own Secret of random passwords and keeps it on upgrade (a render without a cluster would make new ones). A Redis given by URL (*_redis_secret) brings its own password."
  type = object({
    name = string
    keys = optional(object({
      money   = optional(string, "money")
      cache   = optional(string, "cache")
      batches = optional(string, "batches")
    }), {})
  })
  default = null

  validation {
    condition     = var.redis_password_secret == null || can(regex("^[a-z0-9]([-.a-z0-9]{0,251}[a-z0-9])?$", var.redis_password_secret.name))
    error_message = "redis_password_secret.name must be a Secret name (DNS-1123 subdomain)."
  }
  validation {
    # try(): Terraform before 1.12 evaluates both sides of ||, and null has no keys.
    condition     = var.redis_password_secret == null || alltrue([for key in values(try(var.redis_password_secret.keys, {})) : can(regex("^[-._a-zA-Z0-9]{1,253}$", key))])
    error_message = "redis_password_secret.keys must be Secret keys: letters, digits, '-', '_' and '.'."
  }
}

variable "ledger_dsn_secret" {
  description = "Existing Secret holding the SQL ledger's PostgreSQL DSN, password included (ROUTER_LEDGER_SQL_DSN): {name, key}. null: each router pod keeps its own part of the ledger in SQLite on its /tmp, lost with the pod, and nothing trims the ledger streams in the money Redis (ledger_trim needs it)."
  type = object({
    name = string
    key  = optional(string, "dsn")
  })
  default = null

  validation {
    condition     = var.ledger_dsn_secret == null || can(regex("^[a-z0-9]([-.a-z0-9]{0,251}[a-z0-9])?$", var.ledger_dsn_secret.name))
    error_message = "ledger_dsn_secret.name must be a Secret name (DNS-1123 subdomain)."
  }
  validation {
    condition     = var.ledger_dsn_secret == null || can(regex("^[-._a-zA-Z0-9]{1,253}$", var.ledger_dsn_secret.key))
    error_message = "ledger_dsn_secret.key must be a Secret key: letters, digits, '-', '_' and '.'."
  }
}

variable "end_user_hash_secret" {
  description = "Existing Secret holding the server's secret (at least 16 bytes, e.g. `openssl rand -hex 32`) keying the end-user ids the router sends to providers (ROUTER_END_USER_HASH_SECRET): {name, key}. null: they are keyed by the tenant's name alone, and whoever knows it can confirm a guessed id (an email address) in what a provider sees."
  type = object({
    name = string
    key  = optional(string, "secret")
  })
  default = null

  validation {
    condition     = var.end_user_hash_secret == null || can(regex("^[a-z0-9]([-.a-z0-9]{0,251}[a-z0-9])?$", var.end_user_hash_secret.name))
    error_message = "end_user_hash_secret.name must be a Secret name (DNS-1123 subdomain)."
  }
  validation {
    condition     = var.end_user_hash_secret == null || can(regex("^[-._a-zA-Z0-9]{1,253}$", var.end_user_hash_secret.key))
    error_message = "end_user_hash_secret.key must be a Secret key: letters, digits, '-', '_' and '.'."
  }
}

variable "budget_webhook_secret" {
  description = "Existing Secret holding the budget alert webhook's URL (ROUTER_BUDGET_ALERT_WEBHOOK_URL, the chart's router.budgetWebhookSecret: the router POSTs a notification there once per budget, threshold and period): {name, key}. Such a URL usually carries its token (Slack, PagerDuty), which a value in the pod spec would show. null: no webhook. With egress NetworkPolicies on (extra_values), networkPolicy.egress.webhookTo must name its address."
  type = object({
    name = string
    key  = optional(string, "url")
  })
  default = null

  validation {
    condition     = var.budget_webhook_secret == null || can(regex("^[a-z0-9]([-.a-z0-9]{0,251}[a-z0-9])?$", var.budget_webhook_secret.name))
    error_message = "budget_webhook_secret.name must be a Secret name (DNS-1123 subdomain)."
  }
  validation {
    condition     = var.budget_webhook_secret == null || can(regex("^[-._a-zA-Z0-9]{1,253}$", var.budget_webhook_secret.key))
    error_message = "budget_webhook_secret.key must be a Secret key: letters, digits, '-', '_' and '.'."
  }
}

variable "hold_totals" {
  description = "How the routers' admission counts a budget's holds in the money Redis (ROUTER_HOLD_TOTALS, the chart's router.holdTotals): \"auto\", by each holds set's running total (constant time however many requests are in flight) once every live router keeps them, by a scan of the set while a router of a version without them is alive (a rolling upgrade); \"trust\" or \"maintain\", always one or the other (deploy/README.md, running hold totals)."
  type        = string
  default     = "auto"
  nullable    = false

  validation {
    condition     = contains(["auto", "maintain", "trust"], var.hold_totals)
    error_message = "hold_totals must be \"auto\", \"maintain\" or \"trust\"."
  }
}

# --- ledger --------------------------------------------------------------------------------------------------
variable "ledger_trim" {
  description = "The CronJob deleting from the ledger streams in the money Redis (noeviction) the entries older than retention_days (ROUTER_LEDGER_RETENTION_DAYS, given to the router too) that the SQL sink copied into PostgreSQL (`python -m services.router.ledger trim --copied-only`). It runs with a money Redis and either ledger_dsn_secret or, without PostgreSQL, archive.existing_claim: a PersistentVolumeClaim it runs `trim --out /archive/<archive.file>` onto, appending what it deletes (the streams' only copy) to one file per month of the entries named after archive.file (archive.monthly; false: to archive.file itself, for ever), and failing a run that leaves the volume with less than archive.min_free_percent free (LLMRouterLedgerTrimFailing). Without either (or enabled = false) nothing trims the streams, and the money Redis fills and then refuses every request (a Job of your own cannot reach the in-chart money Redis). The chart's money maxmemory (2gb) holds 1 request/s with 7 days kept, with room for entries of the versions before (2 KB each, not 900 B) while they age out (deploy/README.md, sizing)."
  type = object({
    enabled        = optional(bool, true)
    schedule       = optional(string, "17 3 * * *") # daily at 03:17, in time_zone; or a macro such as @daily
    time_zone      = optional(string, "Etc/UTC")    # an IANA name (the CronJob's spec.timeZone)
    retention_days = optional(number, 7)            # days of ledger the streams keep: PostgreSQL holds the ledger
    # Without ledger_dsn_secret: a PersistentVolumeClaim the CronJob runs `trim --out /archive/<file>` onto (the
    # chart's router.ledgerTrim.archive); "": no trim without PostgreSQL.
    archive = optional(object({
      existing_claim   = optional(string, "")
      file             = optional(string, "ledger-trimmed.jsonl") # with monthly the lock, the months' files named after it
      monthly          = optional(bool, true)                     # <file stem>-YYYY-MM<suffix> per month of the entries
      min_free_percent = optional(number, 20)                     # a run leaving less free fails; 0: no check
    }), {})
  })
  default  = {}
  nullable = false

  validation {
    condition     = can(regex("^([-*/,0-9A-Za-z?]+( +[-*/,0-9A-Za-z?]+){4}|@(yearly|annually|monthly|weekly|daily|midnight|hourly))$", var.ledger_trim.schedule))
    error_message = "ledger_trim.schedule must be a cron schedule of five fields, e.g. \"17 3 * * *\", or one of Kubernetes' macros: @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly."
  }
  validation {
    condition     = can(regex("^[A-Za-z][A-Za-z0-9_+-]{0,13}(/[A-Za-z][A-Za-z0-9_+-]{0,13})*$", var.ledger_trim.time_zone)) && lower(var.ledger_trim.time_zone) != "local"
    error_message = "ledger_trim.time_zone must be an IANA time zone name such as Etc/UTC or Europe/Paris (not Local)."
  }
  validation {
    condition     = var.ledger_trim.retention_days >= 1 && floor(var.ledger_trim.retention_days) == var.ledger_trim.retention_days
    error_message = "ledger_trim.retention_days must be a whole number of days, at least 1."
  }
  validation {
    condition     = can(regex("^(|[a-z0-9]([-.a-z0-9]{0,251}[a-z0-9])?)$", var.ledger_trim.archive.existing_claim))
    error_message = "ledger_trim.archive.existing_claim must be a PersistentVolumeClaim name (DNS-1123 subdomain), or \"\" for none."
  }
  validation {
    condition     = can(regex("^[A-Za-z0-9_][A-Za-z0-9._-]*$", var.ledger_trim.archive.file))
    error_message = "ledger_trim.archive.file must be a file name: letters, digits, '.', '_' and '-', not starting with '.' or '-'."
  }
  validation {
    condition     = var.ledger_trim.archive.min_free_percent >= 0 && var.ledger_trim.archive.min_free_percent <= 100
    error_message = "ledger_trim.archive.min_free_percent must be within 0 and 100 (0: no check)."
  }
  validation {
    condition     = var.ledger_trim.archive.existing_claim == "" || var.ledger_dsn_secret == null
    error_message = "ledger_trim.archive needs no ledger_dsn_secret: with PostgreSQL the trim deletes only what the sink copied (--copied-only) and writes no file; leave existing_claim empty."
  }
}

variable "ledger_sink" {
  description = "A standalone SQL ledger sink (`python -m services.ledger sink`, the chart's router.ledgerSink): a Deployment of its own copying the ledger streams of the money Redis into PostgreSQL in place of each router's own sink (the routers get ROUTER_LEDGER_SQL_SINK=false), so the database's writers do not scale and roll with the routers. It needs ledger_dsn_secret. Its replicas share the streams as one consumer group; its metrics on metrics_port, scraped as job llmrouter-ledger-sink (LLMRouterLedgerSinkDown fires while none is up). Its resources: the chart's router.ledgerSink.resources, through extra_values."
  type = object({
    enabled      = optional(bool, false)
    replicas     = optional(number, 1)
    metrics_port = optional(number, 9105) # ROUTER_LEDGER_SINK_METRICS_PORT
  })
  default  = {}
  nullable = false

  validation {
    condition     = !var.ledger_sink.enabled || var.ledger_dsn_secret != null
    error_message = "ledger_sink.enabled needs ledger_dsn_secret: the standalone sink copies the ledger into PostgreSQL (a SQLite ledger is each router pod's own)."
  }
  validation {
    condition     = var.ledger_sink.replicas >= 1 && floor(var.ledger_sink.replicas) == var.ledger_sink.replicas
    error_message = "ledger_sink.replicas must be a whole number, at least 1."
  }
  validation {
    condition     = var.ledger_sink.metrics_port >= 1 && var.ledger_sink.metrics_port <= 65535 && floor(var.ledger_sink.metrics_port) == var.ledger_sink.metrics_port
    error_message = "ledger_sink.metrics_port must be a port number, 1 to 65535."
  }
}

variable "outbox_persistence" {
  description = "The router's charge outbox (the chart's router.outbox.persistence): charges the money Redis could not take wait in a file until they land. Off (the chart's default), the file is on each router pod's emptyDir, and what is left there when the pod is deleted is settled at its hold. On, the router is a StatefulSet with a PersistentVolumeClaim per pod (outbox-<pod>, of size, in storage_class_name: \"\" the cluster's default, \"-\" none), kept when pods go, and a pod started again under that name replays what was left. A claim's size cannot change once made (grow the PVC itself)."
  type = object({
    enabled            = optional(bool, false)
    storage_class_name = optional(string, "")
    size               = optional(string, "1Gi")
    access_modes       = optional(list(string), ["ReadWriteOnce"])
  })
  default  = {}
  nullable = false

  validation {
    condition     = can(regex("^[1-9][0-9]*(Mi|Gi|Ti|M|G|T)$", var.outbox_persistence.size))
    error_message = "outbox_persistence.size must be a whole number of Mi, Gi or Ti (or M, G, T), e.g. 1Gi."
  }
  validation {
    condition     = can(regex("^(|-|[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?)$", var.outbox_persistence.storage_class_name))
    error_message = "outbox_persistence.storage_class_name must be a StorageClass name, \"\" (the cluster's default) or \"-\" (none)."
  }
  validation {
    condition = (
      length(var.outbox_persistence.access_modes) > 0
      && length(distinct(var.outbox_persistence.access_modes)) == length(var.outbox_persistence.access_modes)
      && alltrue([for m in var.outbox_persistence.access_modes : contains(["ReadWriteOnce", "ReadWriteOncePod", "ReadWriteMany"], m)])
    )
    error_message = "outbox_persistence.access_modes must name ReadWriteOnce, ReadWriteOncePod or ReadWriteMany, each once (the router writes the outbox)."
  }
}

# --- exposure and operations ---------------------------------------------------------------------------------
variable "ingress" {
  description = "Expose the edge through an Ingress at this host; null keeps it cluster-internal."
  type = object({
    host       = string
    class_name = optional(string, "")
    tls_secret = optional(string, "")
    # The controller's own settings, e.g. nginx's body limit (1 MB by default), which batch uploads exceed, and its
    # read timeout (60 s), shorter than a completion may run (EDGE_REQUEST_TIMEOUT_S, 310 s):
    # { "nginx.ingress.kubernetes.io/proxy-body-size" = "101m", "nginx.ingress.kubernetes.io/proxy-read-timeout" = "330" }.
    annotations = optional(map(string), {})
  })
  default = null

  validation {
    condition     = var.ingress == null || can(regex("^([a-z0-9]([-a-z0-9]*[a-z0-9])?\\.)+[a-z]{2,}$", var.ingress.host))
    error_message = "ingress.host must be a fully qualified DNS name."
  }
  # The chart's schema refuses these at `helm install`, after Terraform made the namespace. try(): Terraform before
  # 1.12 evaluates both sides of ||, and null has no attributes.
  validation {
    condition     = var.ingress == null || can(regex("^([a-z0-9]([-.a-z0-9]{0,251}[a-z0-9])?)?$", try(var.ingress.class_name, "")))
    error_message = "ingress.class_name must be an IngressClass name (DNS-1123 subdomain, e.g. nginx), or \"\" for the cluster's default."
  }
  validation {
    condition     = var.ingress == null || can(regex("^([a-z0-9]([-.a-z0-9]{0,251}[a-z0-9])?)?$", try(var.ingress.tls_secret, "")))
    error_message = "ingress.tls_secret must be a Secret name (DNS-1123 subdomain), or \"\" for no TLS."
  }
  validation {
    condition     = var.ingress == null || alltrue([for name in keys(try(var.ingress.annotations, {})) : can(regex("^([a-z0-9]([-.a-z0-9]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-._A-Za-z0-9]{0,61}[A-Za-z0-9])?$", name))])
    error_message = "ingress.annotations: each name must be a Kubernetes annotation name, e.g. nginx.ingress.kubernetes.io/proxy-body-size."
  }
}

variable "hourly_budget_usd" {
  description = "Spend per hour above which the cost burn alerts fire."
  type        = number
  default     = 5

  validation {
    condition     = var.hourly_budget_usd > 0
    error_message = "hourly_budget_usd must be positive."
  }
}

variable "edge_p99_slo_seconds" {
  description = "Edge p99 latency objective for the latency alert."
  type        = number
  default     = 20

  # The edge's latency histogram tops out at 300 s: histogram_quantile never answers more, so the alert could
  # never fire at or above it.
  validation {
    condition     = var.edge_p99_slo_seconds > 0 && var.edge_p99_slo_seconds < 300
    error_message = "edge_p99_slo_seconds must be in (0, 300): the edge latency histogram's highest bucket is 300 s."
  }
}

variable "monitoring_enabled" {
  description = "Create the ServiceMonitor and PrometheusRule (where the cluster serves the Prometheus Operator's CRDs; skipped elsewhere) and the Grafana dashboard."
  type        = bool
  default     = true
}

variable "prometheus_release_label" {
  description = "The `release` label the Prometheus' selectors expect on ServiceMonitors and PrometheusRules (kube-prometheus-stack: its release name)."
  type        = string
  default     = "kube-prometheus-stack"
  nullable    = false

  # Kubernetes refuses any other label value, at `helm install`, after Terraform made the namespace.
  validation {
    condition     = can(regex("^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$", var.prometheus_release_label))
    error_message = "prometheus_release_label must be a Kubernetes label value: at most 63 letters, digits, '-', '_' and '.', starting and ending with a letter or digit."
  }
}

variable "extra_values" {
  description = "More Helm values files (YAML strings), applied after the ones this module derives."
  type        = list(string)
  default     = []
}
