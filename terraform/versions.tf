terraform {
  required_version = ">= 1.9.0, < 2.0.0"

  # Remote state, configured at init (partial configuration), e.g. in the cluster itself:
  #   terraform init -backend-config="secret_suffix=llm-cost-router" -backend-config="namespace=kube-system" \
  #     -backend-config="config_path=~/.kube/config"
  # The state holds no secret (Secrets are referenced by name), but it is shared and locked.
  backend "kubernetes" {}

  required_providers {
    helm = {
      source  = "hashicorp/helm"
      version = "3.0.2"
    }
    kubernetes = {
      source  = "hashicorp/kubernetes"
      version = "2.38.0"
    }
  }
}

provider "kubernetes" {
  config_path    = var.kubeconfig_path
  config_context = var.kube_context
}

provider "helm" {
  kubernetes = {
    config_path    = var.kubeconfig_path
    config_context = var.kube_context
  }
}
