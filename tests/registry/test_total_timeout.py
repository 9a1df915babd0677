"""A provider's total_timeout_s, its calls' deadline, leaves the time to send once the router's word to send came back
(llmrouter/deadlines.py, MIN_TOTAL_TIMEOUT_S): one below was loaded, and every call to its models refused unsent."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from llmrouter.deadlines import MIN_SEND_S, MIN_TOTAL_TIMEOUT_S
from llmrouter.registry import DEFAULT_REGISTRY, load_registry
from tests.registry.one_model import one_model_registry


@pytest.mark.parametrize(
    "total",
    [MIN_SEND_S / 2, MIN_SEND_S, round(MIN_TOTAL_TIMEOUT_S - 0.01, 6)],
    ids=["below the time to send", "the time to send", "no time for the word to send"],
)
def test_a_total_timeout_with_no_time_to_send_is_refused_naming_it_and_the_least(total: float) -> None:
    with pytest.raises(ValidationError) as refused:
        one_model_registry("openai", {"total_timeout_s": total})
    (error,) = refused.value.errors()
    assert error["loc"] == ("providers", "p", "total_timeout_s")
    assert f"total_timeout_s {total} s is below {MIN_TOTAL_TIMEOUT_S} s, the least accepted" in error["msg"]


def test_the_registry_file_is_refused_at_load(tmp_path: Path) -> None:
    registry = yaml.safe_load(DEFAULT_REGISTRY.read_text())
    provider = next(iter(registry["providers"]))
    registry["providers"][provider]["total_timeout_s"] = 0.1
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(registry))
    with pytest.raises(ValueError, match=rf"providers\.{provider}\.total_timeout_s\n.*total_timeout_s 0\.1 s is below"):
        load_registry(path)


@pytest.mark.parametrize("total", [MIN_TOTAL_TIMEOUT_S, 120])
def test_the_least_and_above_are_accepted(total: float) -> None:
    assert one_model_registry("openai", {"total_timeout_s": total}).providers["p"].total_timeout_s == total
