"""A service bound to its launcher (services/die_with_parent.py) whose launcher is gone before the binding is not
started: nothing would ever stop it. That it stops once its launcher is killed: tests/ops/test_launcher.py."""

from __future__ import annotations

import subprocess
import sys

from services import die_with_parent


def test_a_service_whose_launcher_is_already_gone_is_not_started() -> None:
    """The launcher killed between starting a service and its binding: the service does not run."""
    not_the_parent = "1"
    ran = subprocess.run(
        [sys.executable, "-S", die_with_parent.__file__, not_the_parent, sys.executable, "-c", "print('served')"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode != 0
    assert "served" not in ran.stdout
    assert "launcher (pid 1) is gone" in ran.stderr
