"""Every `python -m MODULE --flag ...` the documents show runs as written: the module is the repository's and
each flag is one it defines (read from its source, not run: fast). A flag that existed only on a branch, or was
renamed, fails here rather than at an operator's or a reader's terminal. Nor does its package import it before
runpy runs it (runpy then warns, on every run, of "unpredictable behaviour")."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted((ROOT / "deploy").glob("*.md")),
    ROOT / "benchmarks" / "README.md",
    *sorted((ROOT / "services").glob("*/README.md")),
    ROOT / "helm" / "llm-cost-router" / "values.yaml",
    ROOT / "helm" / "llm-cost-router" / "templates" / "NOTES.txt",
]
# A command runs to the end of its line, code span, or shell comment; a backslash continues it on the next line.
COMMAND = re.compile(r"python -m ([a-z_][a-z0-9_.]*)((?:[^`\n#|;)]|\\\n)*)")
# The `llmrouter` command line (llmrouter/cli), as the README shows it.
CLI = re.compile(r"(?<![\w/.-])llmrouter ((?:ask|decide|stats|budgets|key-moves|ledger|evaluate)\b[^`\n#|;)]*)")


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """(document, module, flags) of every `python -m` command of this repository's modules."""
    found = []
    for doc in DOCUMENTS:
        text = doc.read_text()
        for args in CLI.findall(text):
            found.append(
                (str(doc.relative_to(ROOT)), "llmrouter.cli", re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", args))
            )
        for module, args in COMMAND.findall(text):
            if module.split(".")[0] in {"services", "llmrouter", "evaluation", "benchmarks"}:
                flags = re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", args)
                found.append((str(doc.relative_to(ROOT)), module.rstrip("."), flags))
    return found


def module_source(module: str) -> str:
    """A module's source; a package's, every file of it (its __main__ may take its flags from a sibling)."""
    path = ROOT.joinpath(*module.split("."))
    if path.is_dir():
        return "".join(p.read_text() for p in sorted(path.rglob("*.py")))
    assert path.with_suffix(".py").is_file(), f"no module {module}"
    return path.with_suffix(".py").read_text()


COMMANDS = documented_commands()


def test_the_documents_show_commands() -> None:
    modules = {module for _, module, _ in COMMANDS}
    assert {
        "services.router.ledger",
        "services.ledger",
        "evaluation.cascade",
        "benchmarks.paths",
        "llmrouter.cli",
    } <= modules


@pytest.mark.parametrize(("doc", "module", "flags"), COMMANDS, ids=[f"{d}:{m}" for d, m, _ in COMMANDS])
def test_documented_command_is_the_modules(doc: str, module: str, flags: list[str]) -> None:
    source = module_source(module)
    for flag in flags:
        assert f'"{flag}"' in source, f"{doc}: python -m {module} has no {flag}"


def run_targets() -> dict[str, list[str]]:
    """The documented modules `python -m` runs (a package's __main__), by the package runpy imports before them."""
    targets = defaultdict(list)
    for module in sorted({module for _, module, _ in COMMANDS}):
        if ROOT.joinpath(*module.split(".")).is_dir():
            targets[module].append(f"{module}.__main__")
        else:
            targets[module.rpartition(".")[0]].append(module)
    return targets


TARGETS = run_targets()


@pytest.mark.parametrize("package", sorted(TARGETS))
def test_documented_module_is_not_imported_by_its_package(package: str) -> None:
    """runpy imports a module's package first; a package importing the module it then runs makes every run print
    "RuntimeWarning: ... found in sys.modules ... unpredictable behaviour" to the operator (money_check's did)."""
    script = f"import importlib, json, sys; importlib.import_module({package!r}); print(json.dumps(list(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    imported = set(json.loads(done.stdout.splitlines()[-1])) & set(TARGETS[package])
    assert not imported, f"importing {package} imports {sorted(imported)}, which python -m then runs again"


# The documented commands a newcomer and an operator run, by the name their usage line gives them.
HELPED = {
    "services": "python -m services",
    "llmrouter.opscheck": "python -m llmrouter.opscheck",
    "llmrouter.cli": "llmrouter",
    "services.edge.keys": "python -m services.edge.keys",
    "services.ledger": "python -m services.ledger",
    "services.router.ledger": "python -m services.router.ledger",
    "services.router.money_check": "python -m services.router.money_check",
    "services.router.key_move": "python -m services.router.key_move",
    "services.classifier.calibrate": "python -m services.classifier.calibrate",
    "services.classifier.training": "python -m services.classifier.training",
    "services.classifier.training.add_model": "python -m services.classifier.training.add_model",
    "services.verifier.training": "python -m services.verifier.training",
    "benchmarks.kept_answer_size": "python -m benchmarks.kept_answer_size",  # its --help ran the benchmark
}


@pytest.mark.parametrize("module", sorted(HELPED))
def test_help_names_the_command_and_says_what_it_does_in_whole_sentences(module: str) -> None:
    """`--help` showed `usage: __main__.py`, opscheck.py or calibrate.py, a description cut at the docstring's first
    line, mid-sentence ("... as their own processes (as", "binds the key id (16 hex", "--json"), or none at all."""
    done = subprocess.run(
        [sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.startswith(f"usage: {HELPED[module]} ")
    description = done.stdout.split("\n\n")[1]
    assert description.rstrip().endswith((".", "?")), f"python -m {module} --help: {description!r}"
