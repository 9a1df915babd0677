"""`python -m services.providers` as deployed: settings from PROVIDERS_* variables, READY line, serves,
drains on SIGTERM; bad settings exit with a clear message."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import yaml

from llmrouter.v1 import common_pb2, provider_pb2_grpc
from tests.fakes import FakeAnthropic, FakeOpenAI
from tests.providers.conftest import registry

REPO = Path(__file__).resolve().parents[2]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), **extra}


async def test_serves_and_drains(tmp_path: Path, openai_fake: FakeOpenAI, anthropic_fake: FakeAnthropic) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(registry(openai_fake.base_url, anthropic_fake.base_url)))
    env = _env(
        PROVIDERS_PORT="0",
        PROVIDERS_REGISTRY_PATH=str(path),
        PROVIDERS_LOCAL_MODEL_DIR=str(tmp_path / "none"),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.providers"], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("READY providers "), line
        port = int(line.split()[-1])
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            models = await provider_pb2_grpc.ProviderStub(channel).ListModels(common_pb2.ListModelsRequest())
        assert [m.name for m in models.models] == ["cheap", "strong", "claude"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_invalid_settings_exit_with_a_clear_message() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "services.providers"],
        cwd=REPO,
        env=_env(PROVIDERS_PORT="99999999"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2 and "PROVIDERS_PORT" in done.stderr


def test_a_sigterm_sent_on_the_ready_line_drains(
    tmp_path: Path, openai_fake: FakeOpenAI, anthropic_fake: FakeAnthropic
) -> None:
    """Supervisors and tests wait for READY: a SIGTERM sent the moment it is read drains (exit 0), never kills the
    process half-way (-15), as it did while the handlers were installed after the line."""
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(registry(openai_fake.base_url, anthropic_fake.base_url)))
    env = _env(PROVIDERS_PORT="0", PROVIDERS_REGISTRY_PATH=str(path), PROVIDERS_LOCAL_MODEL_DIR=str(tmp_path / "x"))
    for _ in range(5):  # the window was a few instructions wide: a few tries to hit it
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.providers"], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().startswith("READY providers ")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
