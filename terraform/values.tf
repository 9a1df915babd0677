# The chart's values derived from the variables. Pure computation (no resources), so deploy/terraform_check.py
# can evaluate it offline, without the providers, and render the chart with the result.
locals {
  provider_secret = "${var.release_name}-provider-keys"
  redis_secret    = "${var.release_name}-redis"
  edge_secret     = "${var.release_name}-edge-keys"
  # Whether there is a URL is no secret; the URL itself stays sensitive.
  external_redis   = nonsensitive(var.redis_url != null)
  edge_auth        = nonsensitive(length(var.edge_api_keys) > 0)
  edge_service_dns = "${var.release_name}-edge.${var.namespace}.svc.cluster.local" # fullnameOverride

  # Values for the chart (helm/llm-cost-router/values.yaml), only what this module decides.
  values = merge(
    {
      image = var.image
      providers = {
        apiKeys = { existingSecret = local.provider_secret }
      }
      edge = {
        apiKeys = { existingSecret = local.edge_auth ? local.edge_secret : "" }
      }
      fullnameOverride = var.release_name
      redis = {
        enabled   = !local.external_redis
        urlSecret = { name = local.external_redis ? local.redis_secret : "", key = local.external_redis ? "url" : "" }
      }
      monitoring = {
        serviceMonitor = { enabled = var.monitoring_enabled }
        prometheusRule = {
          enabled           = var.monitoring_enabled
          hourlyBudgetUsd   = var.hourly_budget_usd
          edgeP99SloSeconds = var.edge_p99_slo_seconds
        }
        dashboard = { enabled = var.monitoring_enabled }
      }
      ingress = {
        enabled   = var.ingress != null
        className = try(var.ingress.class_name, "")
        hosts     = var.ingress == null ? [] : [{ host = var.ingress.host, paths = [{ path = "/", pathType = "Prefix" }] }]
        tls       = try(var.ingress.tls_secret, "") == "" ? [] : [{ secretName = var.ingress.tls_secret, hosts = [var.ingress.host] }]
      }
    },
  )
  # Per-service HPA bounds, merged into the service sections above.
  chart_values = merge(local.values, {
    for name, a in var.autoscaling : name => merge(lookup(local.values, name, {}), {
      autoscaling = { enabled = true, minReplicas = a.min_replicas, maxReplicas = a.max_replicas }
    })
  })
}
