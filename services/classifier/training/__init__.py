"""Training pipeline of the classifier (build time only: torch, transformers, scikit-learn)."""
