output "cluster" {
  description = "Name of the GKE cluster."
  value       = google_container_cluster.this.name
}

output "get_credentials" {
  description = "The command that points kubectl at the cluster."
  value       = "gcloud container clusters get-credentials ${google_container_cluster.this.name} --region ${var.region} --project ${var.project}"
}

output "edge_endpoint" {
  description = "In-cluster URL of the OpenAI-compatible API."
  value       = module.llm_cost_router.edge_endpoint
}
