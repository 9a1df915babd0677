variable "project" {
  description = "Google Cloud project id."
  type        = string
}

variable "region" {
  description = "Region of the cluster (regional: the control plane and nodes span its zones)."
  type        = string
  default     = "europe-west1"
}

variable "name" {
  description = "Name of the cluster, its network and the release."
  type        = string
  default     = "llm-cost-router"
}

variable "authorized_networks" {
  description = "CIDR blocks allowed to reach the cluster's control plane (kubectl, Terraform)."
  type        = map(string)
}

variable "node_machine_type" {
  description = "Machine type of the node pool (the local model wants ~0.5 GB per providers pod)."
  type        = string
  default     = "e2-standard-4"
}

variable "node_count" {
  description = "Node pool autoscaling bounds, per zone."
  type = object({
    min = number
    max = number
  })
  default = { min = 1, max = 5 }
}

variable "image" {
  description = "Image of the four services (see the root module)."
  type = object({
    repository = string
    tag        = optional(string, "")
    digest     = optional(string, "")
  })
}

variable "edge_keys_secret" {
  description = "Existing Secret with the edge's client keys (created before the release; see the root module)."
  type        = string
  default     = "llm-edge-keys"
}

variable "ledger_dsn_secret" {
  description = "Existing Secret with the SQL ledger's PostgreSQL DSN, password included (created before the release; see the root module): {name, key}. null keeps each router pod's part of the ledger in SQLite, lost with the pod, and nothing trims the ledger streams."
  type = object({
    name = string
    key  = optional(string, "dsn")
  })
  default = { name = "llm-ledger" }
}

variable "end_user_hash_secret" {
  description = "Existing Secret with the server's secret keying the end-user ids sent to providers (created before the release; see the root module): {name, key}. null keys them by the tenant's name alone: whoever knows it can confirm a guessed id."
  type = object({
    name = string
    key  = optional(string, "secret")
  })
  default = { name = "llm-end-user-hash" }
}

variable "budget_webhook_secret" {
  description = "Existing Secret with the budget alert webhook's URL (created before the release; see the root module): {name, key}. null: no webhook."
  type = object({
    name = string
    key  = optional(string, "url")
  })
  default = null
}

variable "ledger_trim" {
  description = "The daily CronJob trimming the ledger streams in the money Redis of what the SQL sink copied: {enabled, schedule, time_zone, retention_days} (see the root module); it runs with ledger_dsn_secret."
  type = object({
    enabled        = optional(bool, true)
    schedule       = optional(string, "17 3 * * *")
    time_zone      = optional(string, "Etc/UTC")
    retention_days = optional(number, 7)
  })
  default  = {}
  nullable = false
}

variable "hold_totals" {
  description = "How the routers' admission counts a budget's holds (the root module's hold_totals): \"auto\" (running totals once every live router keeps them, a scan while one of a version without them is alive), \"trust\" or \"maintain\"; see deploy/README.md."
  type        = string
  default     = "auto"
  nullable    = false
}

variable "ledger_sink" {
  description = "A standalone SQL ledger sink copying the ledger streams into PostgreSQL in place of the routers' own sinks: {enabled, replicas, metrics_port} (see the root module); it needs ledger_dsn_secret."
  type = object({
    enabled      = optional(bool, false)
    replicas     = optional(number, 1)
    metrics_port = optional(number, 9105)
  })
  default  = {}
  nullable = false
}
