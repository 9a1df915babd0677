# A GKE cluster for llm-cost-router, then the root module installed into it.
locals {
  labels = { app = "llm-cost-router", managed-by = "terraform" }
}

# --- network: a VPC with one subnet, alias ranges for pods and services, flow logs ---------------------------
resource "google_compute_network" "this" {
  name                    = var.name
  auto_create_subnetworks = false
}

resource "google_compute_subnetwork" "nodes" {
  name                     = "${var.name}-nodes"
  network                  = google_compute_network.this.id
  region                   = var.region
  ip_cidr_range            = "10.10.0.0/20"
  private_ip_google_access = true # private nodes reach Google APIs (image pulls) without public IPs

  secondary_ip_range {
    range_name    = "pods"
    ip_cidr_range = "10.20.0.0/14"
  }
  secondary_ip_range {
    range_name    = "services"
    ip_cidr_range = "10.24.0.0/20"
  }

  log_config {
    aggregation_interval = "INTERVAL_5_MIN"
    flow_sampling        = 0.5
    metadata             = "INCLUDE_ALL_METADATA"
  }
}

# Nothing reaches the nodes from outside but what GKE opens itself (its own rules have higher priority).
resource "google_compute_firewall" "deny_ingress" {
  name      = "${var.name}-deny-ingress"
  network   = google_compute_network.this.id
  direction = "INGRESS"
  priority  = 65000

  deny {
    protocol = "all"
  }
  source_ranges = ["0.0.0.0/0"]

  log_config {
    metadata = "INCLUDE_ALL_METADATA"
  }
}

# Private nodes reach the LLM APIs (HTTPS) through Cloud NAT.
resource "google_compute_router" "this" {
  name    = var.name
  network = google_compute_network.this.id
  region  = var.region
}

resource "google_compute_router_nat" "this" {
  name                               = var.name
  router                             = google_compute_router.this.name
  region                             = var.region
  nat_ip_allocate_option             = "AUTO_ONLY"
  source_subnetwork_ip_ranges_to_nat = "ALL_SUBNETWORKS_ALL_IP_RANGES"

  log_config {
    enable = true
    filter = "ERRORS_ONLY"
  }
}

# --- nodes run as their own service account with the least roles ---------------------------------------------
resource "google_service_account" "nodes" {
  account_id   = "${var.name}-nodes"
  display_name = "llm-cost-router GKE nodes"
}

resource "google_project_iam_member" "nodes" {
  for_each = toset([
    "roles/logging.logWriter",
    "roles/monitoring.metricWriter",
    "roles/monitoring.viewer",
    "roles/artifactregistry.reader",
  ])
  project = var.project
  role    = each.value
  member  = "serviceAccount:${google_service_account.nodes.email}"
}

# --- the cluster: private nodes, workload identity, Dataplane V2 (enforces the chart's NetworkPolicies) -------
resource "google_container_cluster" "this" {
  #checkov:skip=CKV_GCP_12:Dataplane V2 (datapath_provider ADVANCED_DATAPATH) enforces NetworkPolicy; the legacy network_policy addon conflicts with it
  #checkov:skip=CKV_GCP_69:the default node pool is removed; the node pool below sets workload_metadata_config GKE_METADATA
  #checkov:skip=CKV_GCP_65:RBAC through Google Groups needs the organisation's gke-security-groups; add authenticator_groups_config where it exists
  name     = var.name
  location = var.region

  network         = google_compute_network.this.id
  subnetwork      = google_compute_subnetwork.nodes.id
  networking_mode = "VPC_NATIVE"
  ip_allocation_policy {
    cluster_secondary_range_name  = "pods"
    services_secondary_range_name = "services"
  }
  datapath_provider = "ADVANCED_DATAPATH"

  # The node pool below replaces the default one.
  remove_default_node_pool = true
  initial_node_count       = 1
  deletion_protection      = true

  release_channel {
    channel = "REGULAR"
  }
  workload_identity_config {
    workload_pool = "${var.project}.svc.id.goog"
  }
  private_cluster_config {
    enable_private_nodes    = true
    enable_private_endpoint = false
    master_ipv4_cidr_block  = "172.16.0.0/28"
  }
  master_authorized_networks_config {
    dynamic "cidr_blocks" {
      for_each = var.authorized_networks
      content {
        display_name = cidr_blocks.key
        cidr_block   = cidr_blocks.value
      }
    }
  }
  master_auth {
    client_certificate_config {
      issue_client_certificate = false
    }
  }
  binary_authorization {
    evaluation_mode = "PROJECT_SINGLETON_POLICY_ENFORCE"
  }
  enable_intranode_visibility = true
  enable_shielded_nodes       = true
  enable_legacy_abac          = false
  resource_labels             = local.labels

  # The Prometheus Operator's ServiceMonitor/PrometheusRule: install kube-prometheus-stack (or use Google's
  # managed Prometheus); the chart renders its monitoring objects only where their CRDs exist.
  monitoring_config {
    enable_components = ["SYSTEM_COMPONENTS"]
  }
}

resource "google_container_node_pool" "default" {
  name     = "default"
  cluster  = google_container_cluster.this.id
  location = var.region

  autoscaling {
    min_node_count = var.node_count.min
    max_node_count = var.node_count.max
  }
  management {
    auto_repair  = true
    auto_upgrade = true
  }

  node_config {
    machine_type    = var.node_machine_type
    image_type      = "COS_CONTAINERD"
    service_account = google_service_account.nodes.email
    oauth_scopes    = ["https://www.googleapis.com/auth/cloud-platform"]
    labels          = local.labels

    workload_metadata_config {
      mode = "GKE_METADATA" # pods see their Kubernetes service account's identity, never the node's
    }
    shielded_instance_config {
      enable_secure_boot          = true
      enable_integrity_monitoring = true
    }
    metadata = {
      disable-legacy-endpoints = "true"
    }
  }
}

# --- the release ---------------------------------------------------------------------------------------------
module "llm_cost_router" {
  source = "../.."

  namespace        = var.name
  release_name     = var.name
  image            = var.image
  edge_keys_secret = var.edge_keys_secret
  # The SQL ledger in PostgreSQL (e.g. Cloud SQL, reached through the VPC): durable and shared by the router
  # replicas, and, with it, the daily CronJob trimming the ledger streams in the money Redis of what it copied.
  ledger_dsn_secret = var.ledger_dsn_secret
  ledger_trim       = var.ledger_trim
  ledger_sink       = var.ledger_sink # off by default: the routers copy the ledger themselves
  # How admission counts a budget's holds: "maintain" while routers of a version without running totals still serve.
  hold_totals = var.hold_totals
  # The secret keying the end-user ids sent to providers: without it, whoever knows a tenant's name can confirm a
  # guessed id in what a provider sees.
  end_user_hash_secret = var.end_user_hash_secret
  # The budget alert webhook's URL (it carries its token) from a Secret; null: no webhook.
  budget_webhook_secret = var.budget_webhook_secret
  # The Secrets (provider keys, edge keys, the ledger's DSN, the end-user hash secret) exist in the namespace before
  # the release: create the namespace with them (kubectl, External Secrets) and let the module leave it alone.
  create_namespace = false

  depends_on = [google_container_node_pool.default]
}
