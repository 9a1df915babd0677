"""`make run` (python -m services) with a setting's value refused says which, in one line, as each service does on its
own (llmrouter.settings.load_settings), and starts nothing: a pydantic traceback buried the setting's name."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT


def test_a_bad_setting_stops_the_launch_in_one_line_naming_it() -> None:
    env = {**os.environ, "ROUTER_TENANT_BUDGET_USD": "fifty"}
    launch = subprocess.run(
        [sys.executable, "-m", "services", "--no-demo"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert launch.returncode == 2, launch.stderr
    assert "Traceback" not in launch.stderr
    assert "invalid configuration for RouterSettings:\n" in launch.stderr
    assert "  ROUTER_TENANT_BUDGET_USD: Input should be a valid decimal (got 'fifty')\n" in launch.stderr
    assert "is up" not in launch.stdout
