"""Under CI a missing deploy tool fails the test that needs it; on a developer's machine it skips."""

from __future__ import annotations

import pytest

from . import support


def test_missing_tool_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("PATH", "")
    with pytest.raises(pytest.fail.Exception, match="CI=true: no-such-linter is not installed"):
        support.tool("no-such-linter")


def test_missing_tool_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("PATH", "")
    with pytest.raises(pytest.skip.Exception, match="no-such-linter is not installed"):
        support.tool("no-such-linter")


def test_installed_tool_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    assert support.tool("sh").endswith("/sh")
