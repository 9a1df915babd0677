output "namespace" {
  description = "Namespace of the release."
  value       = var.namespace
}

output "release_name" {
  description = "Helm release name."
  value       = helm_release.llm_cost_router.name
}

output "release_status" {
  description = "Status of the Helm release (deployed, failed, ...)."
  value       = helm_release.llm_cost_router.status
}

output "edge_endpoint" {
  description = "In-cluster URL of the OpenAI-compatible API: the edge Service and port as the chart names and serves them (with the fullnameOverride, nameOverride and edge.port of extra_values too); null with a packaged chart (chart_path) whose values.yaml the module cannot read, unless extra_values give edge.port."
  value       = local.edge_endpoint
}

output "public_endpoint" {
  description = "Public URL of the API through the Ingress, when there is one."
  value       = var.ingress == null ? null : "${var.ingress.tls_secret == "" ? "http" : "https"}://${var.ingress.host}/v1"
}

output "provider_keys_secret" {
  description = "Secret the providers pods read the provider API keys from (mounted as files)."
  value       = var.provider_keys_secret
}
