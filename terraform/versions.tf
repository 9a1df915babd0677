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

# No provider blocks here, so the module works as a root and as a child (terraform/examples/gke passes its
# cluster's providers in). As a root, the kubernetes and helm providers read the kubeconfig from the
# environment: KUBE_CONFIG_PATH=~/.kube/config and, for another than the current context, KUBE_CTX.
