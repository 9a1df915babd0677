"""`make test` and `make test-heavy` split the suite by the `heavy` marker: together they run every test, each test file
whole by one of them (a file is marked as a whole, pytestmark). Collected as the Makefile's own commands collect it,
the marker expressions read from the Makefile: a target that lost its `-m`, a misspelt expression or a file marked
only in part fails here. Collecting the suite twice takes some 35 s of CPU, so this check is itself a heavy one."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.heavy  # make test-heavy: collects the whole suite twice

ROOT = Path(__file__).resolve().parent.parent
MAKEFILE = (ROOT / "Makefile").read_text()


def target_pytest_args(target: str) -> list[str]:
    """The arguments the target's recipe gives pytest, $(TEST_PYTEST) expanded, its xdist options left out (a
    collection needs no workers)."""
    common = re.search(r"^TEST_PYTEST := \$\(PY\) -m pytest (.*)$", MAKEFILE, re.MULTILINE)
    recipe = re.search(rf"^{re.escape(target)}:.*\n\t\$\(TEST_PYTEST\)(.*)$", MAKEFILE, re.MULTILINE)
    assert common and recipe, f"make {target} no longer runs $(TEST_PYTEST): update this test"
    args = shlex.split(common.group(1)) + shlex.split(recipe.group(1))
    xdist_options = {index + 1 for index, arg in enumerate(args) if arg in {"-n", "--dist"}}  # their values
    return [arg for index, arg in enumerate(args) if arg not in {"-n", "--dist"} and index not in xdist_options]


def collected(target: str) -> set[str]:
    """The node ids the target's pytest collects."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("PYTEST_")}  # not an xdist worker
    args = [sys.executable, "-m", "pytest", "--collect-only", "-p", "no:cacheprovider", *target_pytest_args(target)]
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"make {target}'s collection failed ({done.returncode}):\n{done.stdout}{done.stderr}"
    return {line for line in done.stdout.splitlines() if "::" in line}


def test_every_test_file_is_run_whole_by_exactly_one_of_make_test_and_make_test_heavy() -> None:
    default, heavy = collected("test"), collected("test-heavy")
    assert default and heavy
    default_files = {node.split("::")[0] for node in default}
    heavy_files = {node.split("::")[0] for node in heavy}
    assert not default_files & heavy_files, "files split between make test and make test-heavy"
    test_files = {
        str(path.relative_to(ROOT))
        for path in (ROOT / "tests").rglob("test_*.py")
        if not path.is_relative_to(ROOT / "tests" / "deploy")  # lint-deploy's
    }
    assert default_files | heavy_files == test_files
