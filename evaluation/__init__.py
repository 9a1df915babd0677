"""Offline evaluation of routers on outcome files: RouteLLM's metrics (APGR, CPT), cost at a quality target,
multi-tier cost-quality curves, and plots."""
