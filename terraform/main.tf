resource "kubernetes_namespace_v1" "this" {
  count = var.create_namespace ? 1 : 0

  metadata {
    name = var.namespace
    labels = {
      "app.kubernetes.io/part-of"          = "llm-cost-router"
      "pod-security.kubernetes.io/enforce" = "restricted"
    }
  }
}

resource "kubernetes_secret_v1" "provider_keys" {
  depends_on = [kubernetes_namespace_v1.this]

  metadata {
    name      = local.provider_secret
    namespace = var.namespace
    labels    = { "app.kubernetes.io/part-of" = "llm-cost-router" }
  }
  type = "Opaque"
  data = var.provider_api_keys
}

resource "kubernetes_secret_v1" "redis" {
  count      = local.external_redis ? 1 : 0
  depends_on = [kubernetes_namespace_v1.this]

  metadata {
    name      = local.redis_secret
    namespace = var.namespace
    labels    = { "app.kubernetes.io/part-of" = "llm-cost-router" }
  }
  type = "Opaque"
  data = { url = var.redis_url }
}

resource "kubernetes_secret_v1" "edge_keys" {
  count      = local.edge_auth ? 1 : 0
  depends_on = [kubernetes_namespace_v1.this]

  metadata {
    name      = local.edge_secret
    namespace = var.namespace
    labels    = { "app.kubernetes.io/part-of" = "llm-cost-router" }
  }
  type = "Opaque"
  # The edge's EDGE_API_KEYS_FILE format: one "<tenant> <sha256 hex of the key>" per line (digests, not keys).
  data = { "api-keys" = join("\n", [for key, tenant in var.edge_api_keys : "${tenant} ${sha256(key)}"]) }
}

resource "helm_release" "llm_cost_router" {
  name      = var.release_name
  namespace = var.namespace
  chart     = coalesce(var.chart_path, "${path.module}/../helm/llm-cost-router")

  values = concat([yamlencode(local.chart_values)], var.extra_values)

  atomic          = true
  cleanup_on_fail = true
  wait            = true
  timeout         = 600

  depends_on = [
    kubernetes_namespace_v1.this,
    kubernetes_secret_v1.provider_keys,
    kubernetes_secret_v1.redis,
    kubernetes_secret_v1.edge_keys,
  ]
}
