"""A strong share or a quality kept is a target for a model set: the decision's choice with every provider's key is
routed at the target the aim gives every registry model, not the one it gives the few models served here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from llmrouter.registry import load_registry
from llmrouter.v1 import common_pb2, router_pb2, router_pb2_grpc
from services.router.calibration import Calibration
from services.router.settings import RouterSettings
from tests.conftest import ROOT
from tests.integration.conftest import served_stack

REGISTRY_PATH = ROOT / "config" / "models.yaml"


@pytest.mark.parametrize("aim", [{"strong_share": 0.2}, {"quality_kept": 0.95}])
async def test_the_choice_with_every_provider_uses_the_aims_target_for_every_model(
    aim: dict[str, Any], classifier_dir: Path, redis_url: str, local_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = load_registry(REGISTRY_PATH)
    for provider in registry.providers.values():  # only the local model is served here
        if provider.api_key_env:
            monkeypatch.delenv(provider.api_key_env, raising=False)
    calibration_path = RouterSettings().calibration_path
    reference = Calibration.read(calibration_path)
    if "strong_share" in aim:
        expected = await reference.quality_target(aim["strong_share"], registry.models, registry)
    else:
        output = RouterSettings().expected_output_tokens
        kept = await reference.quality_target_keeping(aim["quality_kept"], registry.models, registry, output)
        assert kept is not None, "the shipped calibration holds the prompts' sizes"
        expected = kept
    assert expected > 0, "with every model, the aim sends some of the mix beyond the cheapest"
    stack = served_stack(
        REGISTRY_PATH,
        redis_url,
        classifier_dir,
        classifier_timeout_s=5.0,
        verifier=False,
        calibration_path=calibration_path,
    )
    async with stack as servers, grpc.aio.insecure_channel(f"127.0.0.1:{servers['router'].port}") as channel:
        question = common_pb2.ChatMessage(role="user", content="Prove Fermat's little theorem")
        request = router_pb2.CompleteRequest(messages=[question], **aim)
        decided = await router_pb2_grpc.RouterStub(channel).Decide(request, timeout=30)
    assert decided.model_with_every_provider, "cloud models are unavailable here: an alternative is reported"
    assert f"within {expected:.2f} of the best" in decided.reason_with_every_provider, (
        decided.reason_with_every_provider
    )
