# --- cluster -------------------------------------------------------------------------------------------------
variable "kubeconfig_path" {
  description = "Path of the kubeconfig used by the kubernetes and helm providers."
  type        = string
  default     = "~/.kube/config"
}

variable "kube_context" {
  description = "kubeconfig context; null uses the current one."
  type        = string
  default     = null
}

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

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,51}[a-z0-9])?$", var.release_name))
    error_message = "release_name must be a DNS-1123 label of at most 53 characters."
  }
}

variable "chart_path" {
  description = "Path of the chart; defaults to the one in this repository."
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
}

# --- secrets -------------------------------------------------------------------------------------------------
variable "provider_api_keys" {
  description = "Provider API keys by the registry's api_key_env name (OPENAI_API_KEY, ANTHROPIC_API_KEY, GROQ_API_KEY, TOGETHER_API_KEY). Stored in a Secret mounted as files into the providers pods; a provider without a key is not offered."
  type        = map(string)
  default     = {}
  sensitive   = true

  validation {
    condition     = alltrue([for name in keys(var.provider_api_keys) : can(regex("^[A-Z][A-Z0-9_]*_API_KEY$", name))])
    error_message = "provider_api_keys keys must be environment-style names ending in _API_KEY, e.g. OPENAI_API_KEY."
  }
  validation {
    condition     = alltrue([for key in values(var.provider_api_keys) : length(trimspace(key)) > 0])
    error_message = "provider_api_keys values must not be empty: leave the provider out instead."
  }
}

variable "edge_api_keys" {
  description = "Client API keys the edge accepts, key => tenant (budgets and rate limits are per tenant). Their SHA-256 digests are kept in a Secret mounted as a file; empty: the edge refuses to start unless EDGE_ALLOW_ANONYMOUS=true is set (then every caller is one anonymous tenant)."
  type        = map(string)
  default     = {}
  sensitive   = true

  validation {
    condition     = alltrue([for key in keys(var.edge_api_keys) : can(regex("^[A-Za-z0-9_.-]{16,}$", key))])
    error_message = "edge_api_keys keys must be at least 16 characters of letters, digits, '_', '.' or '-'."
  }
  validation {
    condition     = alltrue([for tenant in values(var.edge_api_keys) : can(regex("^[a-z0-9][a-z0-9_-]*$", tenant))])
    error_message = "edge_api_keys tenants must be lower-case names (letters, digits, '_', '-')."
  }
}

variable "redis_url" {
  description = "URL of an external Redis (redis:// or rediss://), kept in a Secret; null runs the chart's single Redis."
  type        = string
  default     = null
  sensitive   = true

  validation {
    condition     = var.redis_url == null || can(regex("^rediss?://", var.redis_url))
    error_message = "redis_url must start with redis:// or rediss://."
  }
}

# --- exposure and operations ---------------------------------------------------------------------------------
variable "ingress" {
  description = "Expose the edge through an Ingress at this host; null keeps it cluster-internal."
  type = object({
    host       = string
    class_name = optional(string, "")
    tls_secret = optional(string, "")
  })
  default = null

  validation {
    condition     = var.ingress == null || can(regex("^([a-z0-9]([-a-z0-9]*[a-z0-9])?\\.)+[a-z]{2,}$", var.ingress.host))
    error_message = "ingress.host must be a fully qualified DNS name."
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

  validation {
    condition     = var.edge_p99_slo_seconds > 0 && var.edge_p99_slo_seconds <= 300
    error_message = "edge_p99_slo_seconds must be in (0, 300]."
  }
}

variable "monitoring_enabled" {
  description = "Create the ServiceMonitor, PrometheusRule and Grafana dashboard (needs the Prometheus Operator CRDs)."
  type        = bool
  default     = true
}

variable "extra_values" {
  description = "More Helm values files (YAML strings), applied after the ones this module derives."
  type        = list(string)
  default     = []
}
