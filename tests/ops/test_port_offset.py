"""`python -m services --port-offset N`: a second stack on one machine, every port not set moved by N."""

from __future__ import annotations

import subprocess
import sys

from services.__main__ import MAX_PORT_OFFSET, with_port_offset
from tests.conftest import ROOT


def test_the_offset_moves_every_default_port_the_environment_does_not_set() -> None:
    env = {"EDGE_PORT": "18000"}
    with_port_offset(env, 100)
    assert env == {
        "EDGE_PORT": "18000",  # set: kept
        "EDGE_METRICS_PORT": "9204",
        "CLASSIFIER_PORT": "50151",
        "CLASSIFIER_METRICS_PORT": "9201",
        "PROVIDERS_PORT": "50152",
        "PROVIDERS_METRICS_PORT": "9202",
        "ROUTER_PORT": "50153",
        "ROUTER_METRICS_PORT": "9203",
        "ROUTER_LEDGER_SINK_METRICS_PORT": "9205",
    }  # no health port: by default each shares its service's


def test_an_offset_past_the_last_port_is_a_usage_error() -> None:
    launch = subprocess.run(
        [sys.executable, "-m", "services", "--port-offset", str(MAX_PORT_OFFSET + 1)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert launch.returncode == 2
    assert f"--port-offset must be 0 to {MAX_PORT_OFFSET}" in launch.stderr
    assert MAX_PORT_OFFSET == 65535 - 50053
