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

# The Secrets (provider keys, edge keys, Redis URLs) are created outside Terraform (kubectl, External Secrets,
# a vault operator) and referenced by name: nothing secret is ever in this module's plan or state.
resource "helm_release" "llm_cost_router" {
  name      = var.release_name
  namespace = var.namespace
  chart     = local.chart

  values = concat([yamlencode(local.chart_values)], var.extra_values)

  atomic          = true
  cleanup_on_fail = true
  wait            = true
  timeout         = local.helm_timeout_seconds # values.tf: the router StatefulSet's rollout, one pod at a time

  depends_on = [kubernetes_namespace_v1.this]
}
