# The chart's values derived from the variables. Pure computation (no resources), so deploy/terraform_check.py
# can evaluate it offline, without the providers, and render the chart with the result. No secret passes through
# here: Secrets are referenced by name only, so neither the plan nor the state holds a key or a Redis URL.
locals {
  chart = coalesce(var.chart_path, "${path.module}/../helm/llm-cost-router")

  # The edge Service as the chart names and serves it, for the edge_endpoint output. The values files in the order
  # helm merges them (this module's, then extra_values), each parsed ({} for one that is not a map: helm would
  # refuse it), over the chart's own values.yaml. As in helm, a setting is the last file's that names it, and one
  # named null there is deleted, the chart's default with it (a section named null, e.g. `edge: null`, likewise,
  # until a later file gives the section again, over the chart's defaults).
  chart_defaults = try(yamldecode(file("${local.chart}/values.yaml")), {}) # {}: a packaged chart, not read here
  user_files     = concat([local.values], [for v in var.extra_values : try(yamldecode(v), {})])
  # edge.port: the last file whose edge names it or is null; a null there leaves the chart's default (helm refuses
  # a null edge.port itself: the schema requires it).
  edge_port_given = [for f in local.user_files : try(f.edge.port, null) if try(f.edge == null, false) || contains(try(keys(f.edge), []), "port")]
  edge_port       = try(coalesce(try(reverse(local.edge_port_given)[0], null), try(local.chart_defaults.edge.port, null)), null)
  # nameOverride and fullnameOverride: the last file naming them, else the chart's; null (deleted) reads as "".
  name_override_given = [for f in local.user_files : try(f.nameOverride, null) if contains(try(keys(f), []), "nameOverride")]
  fullname_given      = [for f in local.user_files : try(f.fullnameOverride, null) if contains(try(keys(f), []), "fullnameOverride")]
  name_override       = try(reverse(local.name_override_given)[0], try(local.chart_defaults.nameOverride, null))
  fullname_override   = try(reverse(local.fullname_given)[0], try(local.chart_defaults.fullnameOverride, null))
  fullname_set        = local.fullname_override == null ? "" : local.fullname_override
  # llmrouter.fullname: fullnameOverride, else the release name, followed by the chart's name unless it holds it;
  # cut to 63 characters and of a trailing "-". A component's name (llmrouter.component) cuts it to 52 likewise.
  chart_name = coalesce(local.name_override, "llm-cost-router")
  fullname = trimsuffix(substr(
    local.fullname_set != "" ? local.fullname_set : (
      strcontains(var.release_name, local.chart_name) ? var.release_name : "${var.release_name}-${local.chart_name}"
    ), 0, 63
  ), "-")
  edge_service  = "${trimsuffix(substr(local.fullname, 0, 52), "-")}-edge"
  edge_endpoint = local.edge_port == null ? null : "http://${local.edge_service}.${var.namespace}.svc.cluster.local:${local.edge_port}/v1"

  # How long helm waits for the release (wait = true; atomic rolls it back past that). A Deployment's rollout is
  # ready once its new pods are, but the router's StatefulSet (outbox_persistence) replaces its pods one at a time,
  # each stopped (its drain, up to the chart's terminationGracePeriodSeconds) and its successor started (the startup
  # probe allows 120 s) before the next: helm's 600 s ran out at two router pods serving long completions, and the
  # rollback rolled them all again. So 600 s, plus that much per router pod the HPA may run (router.replicas without
  # it), as the chart, this module and extra_values give them (the last to name each); the router is a StatefulSet
  # as the last to name router.outbox.persistence.enabled makes it (extra_values over outbox_persistence).
  grace_given          = [for f in local.user_files : try(tonumber(f.terminationGracePeriodSeconds), null) if contains(try(keys(f), []), "terminationGracePeriodSeconds")]
  grace_seconds        = try(coalesce(try(reverse(local.grace_given)[0], null), try(local.chart_defaults.terminationGracePeriodSeconds, null)), 335)
  router_layers        = concat([try(local.chart_defaults.router, {})], [try(local.chart_values.router, {})], [for v in var.extra_values : try(yamldecode(v).router, {})])
  router_max_hpa       = [for r in local.router_layers : tonumber(r.autoscaling.maxReplicas) if can(tonumber(r.autoscaling.maxReplicas))]
  router_replicas      = [for r in local.router_layers : tonumber(r.replicas) if can(tonumber(r.replicas))]
  router_hpa_on        = [for r in local.router_layers : tobool(r.autoscaling.enabled) if can(tobool(r.autoscaling.enabled))]
  router_max_pods      = try(reverse(local.router_hpa_on)[0], true) ? try(reverse(local.router_max_hpa)[0], 1) : try(reverse(local.router_replicas)[0], 1)
  router_outbox_on     = [for r in local.router_layers : tobool(r.outbox.persistence.enabled) if can(tobool(r.outbox.persistence.enabled))]
  router_stateful      = try(reverse(local.router_outbox_on)[0], var.outbox_persistence.enabled)
  helm_timeout_seconds = 600 + (local.router_stateful ? local.router_max_pods * (local.grace_seconds + 120) : 0)

  # Values for the chart (helm/llm-cost-router/values.yaml), only what this module decides.
  values = {
    image = var.image
    providers = {
      apiKeys = { existingSecret = var.provider_keys_secret }
    }
    edge = {
      allowAnonymous = var.allow_anonymous_edge
      apiKeys        = { existingSecret = var.edge_keys_secret == null ? "" : var.edge_keys_secret }
    }
    router = {
      ledgerDsnSecret     = coalesce(var.ledger_dsn_secret, { name = "", key = "" })
      endUserHashSecret   = coalesce(var.end_user_hash_secret, { name = "", key = "" })
      budgetWebhookSecret = coalesce(var.budget_webhook_secret, { name = "", key = "" })
      holdTotals          = var.hold_totals
      ledgerTrim = {
        enabled       = var.ledger_trim.enabled
        schedule      = var.ledger_trim.schedule
        timeZone      = var.ledger_trim.time_zone
        retentionDays = var.ledger_trim.retention_days
        archive = {
          existingClaim  = var.ledger_trim.archive.existing_claim
          file           = var.ledger_trim.archive.file
          monthly        = var.ledger_trim.archive.monthly
          minFreePercent = var.ledger_trim.archive.min_free_percent
        }
      }
      ledgerSink = {
        enabled     = var.ledger_sink.enabled
        replicas    = var.ledger_sink.replicas
        metricsPort = var.ledger_sink.metrics_port
      }
      outbox = {
        persistence = {
          enabled          = var.outbox_persistence.enabled
          storageClassName = var.outbox_persistence.storage_class_name
          size             = var.outbox_persistence.size
          accessModes      = var.outbox_persistence.access_modes
        }
      }
    }
    fullnameOverride = var.release_name
    redis = {
      # In-chart when no Secret is named; the chart ignores enabled when urlSecret.name is set.
      money   = { urlSecret = coalesce(var.money_redis_secret, { name = "", key = "" }) }
      cache   = { urlSecret = coalesce(var.cache_redis_secret, { name = "", key = "" }) }
      batches = { urlSecret = coalesce(var.batches_redis_secret, { name = "", key = "" }) }
      # The chart's own Redis' passwords: the Secret named, else one the chart makes.
      auth = {
        existingSecret     = try(var.redis_password_secret.name, "")
        existingSecretKeys = try(var.redis_password_secret.keys, { money = "money", cache = "cache", batches = "batches" })
      }
    }
    monitoring = {
      serviceMonitor = { enabled = var.monitoring_enabled, labels = { release = var.prometheus_release_label } }
      prometheusRule = {
        enabled           = var.monitoring_enabled
        labels            = { release = var.prometheus_release_label }
        hourlyBudgetUsd   = var.hourly_budget_usd
        edgeP99SloSeconds = var.edge_p99_slo_seconds
      }
      dashboard = { enabled = var.monitoring_enabled }
    }
    ingress = {
      enabled     = var.ingress != null
      className   = try(var.ingress.class_name, "")
      annotations = try(var.ingress.annotations, {})
      hosts       = var.ingress == null ? [] : [{ host = var.ingress.host, paths = [{ path = "/", pathType = "Prefix" }] }]
      tls         = try(var.ingress.tls_secret, "") == "" ? [] : [{ secretName = var.ingress.tls_secret, hosts = [var.ingress.host] }]
    }
  }
  # Per-service HPA bounds, merged into the service sections above.
  chart_values = merge(local.values, {
    for name, a in var.autoscaling : name => merge(lookup(local.values, name, {}), {
      autoscaling = { enabled = true, minReplicas = a.min_replicas, maxReplicas = a.max_replicas }
    })
  })
}
