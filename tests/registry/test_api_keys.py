"""Provider keys come from a directory of files named like the registry's api_key_env (the chart mounts the
provider-keys Secret there and says where in PROVIDERS_API_KEYS_DIR): no key path is written in the registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmrouter.registry import (
    DEFAULT_REGISTRY,
    MAX_KEY_FILE_BYTES,
    ProviderSpec,
    Registry,
    UnreadableKey,
    load_registry,
)
from services.providers.catalog import build_catalog
from services.providers.settings import ProvidersSettings


def test_shipped_registry_names_no_key_path() -> None:
    assert all(not spec.api_key_file for spec in load_registry(DEFAULT_REGISTRY).providers.values())


def test_key_file_in_the_keys_dir_wins_over_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    spec = ProviderSpec(kind="openai", api_key_env="OPENAI_API_KEY")
    assert spec.api_key(tmp_path) == "sk-from-env"  # no file: the environment
    (tmp_path / "OPENAI_API_KEY").write_text("sk-from-secret\n")
    assert spec.api_key(tmp_path) == "sk-from-secret"
    assert spec.api_key(None) == "sk-from-env"


def test_a_key_file_past_its_size_limit_holds_no_key(tmp_path: Path) -> None:
    """Read whole at every registry check, a large printable file (a symlink led astray) was taken as a key and sent."""
    spec = ProviderSpec(kind="openai", api_key_env="OPENAI_API_KEY")
    (tmp_path / "OPENAI_API_KEY").write_text("sk-" + "x" * MAX_KEY_FILE_BYTES)
    with pytest.raises(UnreadableKey, match="larger than 64 KiB"):
        spec.api_key(tmp_path)
    (tmp_path / "OPENAI_API_KEY").write_text("sk-" + "x" * 200 + "\n")
    assert spec.api_key(tmp_path) == "sk-" + "x" * 200


async def test_providers_offer_a_provider_whose_key_is_in_the_keys_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    registry = Registry.model_validate(
        {
            "tiers": ["standard"],
            "providers": {
                "openai": {"kind": "openai", "base_url": "http://127.0.0.1:9", "api_key_env": "OPENAI_API_KEY"}
            },
            "models": [
                {
                    "name": "gpt-4o-mini",
                    "provider": "openai",
                    "tier": "standard",
                    "input_usd_per_mtok": "0.15",
                    "output_usd_per_mtok": "0.6",
                    "context_window": 128000,
                    "quality_prior": 0.7,
                }
            ],
        }
    )
    keys = tmp_path / "keys"
    keys.mkdir()
    settings = ProvidersSettings(api_keys_dir=keys, local_model_dir=tmp_path / "none")
    assert not (await build_catalog(registry, settings)).dispatchers  # no key anywhere: not offered
    (keys / "OPENAI_API_KEY").write_text("sk-mounted")
    catalog = await build_catalog(registry, settings)
    assert list(catalog.dispatchers) == ["openai"]
    await catalog.aclose()
