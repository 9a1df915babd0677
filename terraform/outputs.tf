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
  description = "In-cluster URL of the OpenAI-compatible API."
  value       = "http://${local.edge_service_dns}:8080/v1"
}

output "public_endpoint" {
  description = "Public URL of the API through the Ingress, when there is one."
  value       = var.ingress == null ? null : "${var.ingress.tls_secret == "" ? "http" : "https"}://${var.ingress.host}/v1"
}

output "provider_keys_secret" {
  description = "Secret the providers pods read the provider API keys from (mounted as files)."
  value       = var.provider_keys_secret
}
