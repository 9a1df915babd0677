"""The verifier's escalation thresholds, stored beside the model (threshold.json): per escalation mode, the
P(good) below which a cheap answer is sent to a stronger tier. Written by the held-out cascade evaluation
(`python -m evaluation.cascade --write-threshold DIR`) for the verifier version in DIR; a file written for
another version is ignored, since the thresholds of one model say nothing of another's scores."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

log = logging.getLogger("llmrouter.verifier")
THRESHOLD_FILE = "threshold.json"
MODES = ("auto", "strict")


def write_thresholds(model_dir: Path, version: str, escalate_below: dict[str, float], evidence: dict) -> Path:
    path = model_dir / THRESHOLD_FILE
    record = {"verifier_version": version, "escalate_below": escalate_below, "evidence": evidence}
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return path


def load_thresholds(model_dir: Path, version: str) -> dict[str, float]:
    """Mode -> threshold for the verifier `version`; empty when not calibrated (no file, or another version's)."""
    path = model_dir / THRESHOLD_FILE
    if not path.is_file():
        return {}
    record = json.loads(path.read_text())
    if record.get("verifier_version") != version:
        log.warning(
            "verifier thresholds were written for another version; ignored",
            extra={"file": str(path), "written_for": record.get("verifier_version"), "loaded": version},
        )
        return {}
    thresholds = {mode: float(record["escalate_below"][mode]) for mode in MODES if mode in record["escalate_below"]}
    for mode, value in thresholds.items():
        if not (math.isfinite(value) and 0 <= value <= 1):
            raise ValueError(f"{path}: escalate_below.{mode} must be within [0, 1], not {value}")
    return thresholds
