"""The README's main job: `python -m services --once` starts the four services as their own processes on
embedded defaults (no API key, no Redis) and answers a chat completion through the whole chain."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.integration.conftest import free_port

LOCAL_MODEL = ROOT / "artefacts" / "smollm2" / "genai_config.json"


@pytest.mark.skipif(not LOCAL_MODEL.exists(), reason="artefacts/smollm2 not built: `make local-model` builds it")
def test_stack_answers_with_no_keys_and_no_redis() -> None:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and not k.startswith("ROUTER_")}
    for service in ("CLASSIFIER", "PROVIDERS", "ROUTER", "EDGE"):
        env[f"{service}_PORT"] = str(free_port())
        env[f"{service}_METRICS_PORT"] = str(free_port())
    done = subprocess.run(
        [sys.executable, "-m", "services", "--once"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "-> 200" in done.stdout
    assert "x-router-model: smollm2-135m" in done.stdout
    assert "x-router-cost-usd: 0" in done.stdout
    answer = next(line for line in done.stdout.splitlines() if line.strip().startswith("answer"))
    assert answer.split(":", 1)[1].strip() not in ("''", "")
