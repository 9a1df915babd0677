"""Settings of the classifier service (env prefix CLASSIFIER_), validated at start."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from llmrouter.settings import REPO_ROOT, GrpcServiceSettings, RepoPath

DEFAULT_MODEL_DIR = REPO_ROOT / "artefacts" / "classifier"
DEFAULT_VERIFIER_DIR = REPO_ROOT / "artefacts" / "verifier"


class ClassifierSettings(GrpcServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CLASSIFIER_", extra="ignore", frozen=True)

    port: int = Field(default=50051, ge=0, le=65535)
    metrics_port: int = Field(default=9101, ge=0, le=65535, description="Prometheus port; 0 disables")
    callers: str = "router"  # who may call (docs/conventions.md, Authentication)
    model_dir: RepoPath = Field(default=DEFAULT_MODEL_DIR, description="directory written by make train-classifier")
    # One thread: per prompt it costs 5-13% less CPU than two at every batch size (benchmarks/README.md), and
    # the chart requests half a core. More only where a pod has cores to itself and batch latency matters.
    threads: int = Field(default=1, ge=1, le=64, description="onnxruntime intra-op threads")
    small_batch: int = Field(
        default=4, ge=0, le=1024, description="with threads > 1: runs of at most this many prompts use one thread"
    )
    max_batch: int = Field(default=32, ge=1, le=1024, description="prompts per inference run")
    max_wait_ms: float = Field(default=2.0, ge=0, le=1000, description="how long a batch waits to fill")
    # A short prompt's inference (~0.1 ms) is cheaper than the hand-off to the inference thread; a run of at most
    # 256 characters holds the event loop 0.75 ms at worst (random letters: every few characters a token).
    inline_chars: int = Field(
        default=256, ge=0, le=100_000, description="runs of at most this many characters are scored on the event loop"
    )
    max_prompts: int = Field(default=256, ge=1, description="prompts per request (and answers per Verify)")
    verifier_dir: RepoPath = Field(
        default=DEFAULT_VERIFIER_DIR, description="directory written by make train-verifier; Verify is off without it"
    )
    # Unset: the truncation the model was trained with (metadata.json); changing it degrades predictions.
    head_tokens: int | None = Field(default=None, ge=0, le=510)
    tail_tokens: int | None = Field(default=None, ge=0, le=510)
