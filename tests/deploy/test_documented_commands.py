"""The commands the operator's documents tell to run (the runbooks, deploy/README.md, README.md, docs/, NOTES.txt and
values.yaml's comments) exist with the subcommands and flags written: each is asked for its --help (its argparse
parser: nothing runs), which must list every subcommand and flag the document writes. A runbook naming a flag a CLI
renamed sends the on-call to a usage error at night. Slow-ish: one interpreter per command and subcommand."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from functools import cache

import pytest

from .support import CHART, ROOT

OPERATOR_DOCS = [
    ROOT / "README.md",
    ROOT / "deploy" / "README.md",
    ROOT / "deploy" / "runbooks.md",
    *sorted((ROOT / "docs").glob("*.md")),
    CHART / "templates" / "NOTES.txt",
    CHART / "values.yaml",
]
# `python -m services.<name>` serves: its --help would start the service, which takes no flag anyway.
SERVICES = {"services.edge", "services.router", "services.classifier", "services.providers"}
# A command as the documents write one: in backticks, or on a line of its own indented as a code block.
QUOTED = re.compile(r"`((?:\.venv/bin/)?python -m [a-z_.]+[^`]*|llmrouter [^`]*)`")
INDENTED = re.compile(r"(?m)^ {4}((?:python -m [a-z_.]+|llmrouter) .*)$")


def documented_commands() -> list[tuple[str, str]]:
    """(document, command) of every command written, its whitespace made single spaces."""
    found = set()
    for doc in OPERATOR_DOCS:
        text = doc.read_text()
        for command in QUOTED.findall(text) + INDENTED.findall(text):
            found.add((str(doc.relative_to(ROOT)), " ".join(command.split())))
    return sorted(found)


def module_and_words(command: str) -> tuple[str, list[str]]:
    """The module run and the words after it, up to a pipe or redirection and placeholders (`<key id>`)."""
    words = command.replace(".venv/bin/python", "python").split("|")[0].split()
    module, words = ("llmrouter.cli", words[1:]) if words[0] == "llmrouter" else (words[2], words[3:])
    kept = []
    for word in words:
        if word.startswith(("<", ">")) or word == "...":
            break
        kept.append(word.strip("[]"))
    return module, kept


@cache
def help_text(module: str, path: tuple[str, ...]) -> str:
    result = subprocess.run(
        [sys.executable, "-m", module, *path, "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )
    assert result.returncode == 0, f"python -m {module} {' '.join(path)} --help: {result.stderr[-500:]}"
    return result.stdout


def subcommands(help_: str) -> set[str]:
    """The choices of the usage line's positionals ({export,trim})."""
    usage = help_.split("\n\n", 1)[0]
    return {choice for group in re.findall(r"\{([a-z0-9,_-]+)\}", usage) for choice in group.split(",")}


def check_command(command: str) -> None:
    """Every word after the module is a subcommand its parser offers (descending into it), a flag the parser or a
    parent takes, or a value: a flag's, or a positional's where the parser offers no subcommand."""
    module, words = module_and_words(command)
    path: list[str] = []
    helps = [help_text(module, ())]
    after_flag = False
    for word in words:
        if word.startswith("--"):
            flag = word.split("=")[0]
            written = rf"(?<![\w-]){re.escape(flag)}(?![\w-])"
            assert any(re.search(written, h) for h in helps), f"{command!r}: {flag} is no flag of it"
            after_flag = "=" not in word
            continue
        if after_flag:  # the flag's value
            after_flag = False
            continue
        offered = subcommands(helps[-1])
        if word in offered:
            path.append(word)
            helps.append(help_text(module, tuple(path)))
        else:
            assert not offered or path, f"{command!r}: {word!r} is none of its subcommands {sorted(offered)}"


COMMANDS = [
    (doc, command)
    for doc, command in documented_commands()
    if module_and_words(command)[0] not in SERVICES and re.fullmatch(r"[a-z_.]*[a-z_]", module_and_words(command)[0])
]  # and not `python -m services.<name>`, a placeholder


@pytest.mark.parametrize(("doc", "command"), COMMANDS, ids=[f"{d}: {c}"[:90] for d, c in COMMANDS])
def test_a_documented_command_takes_what_it_is_written_with(doc: str, command: str) -> None:
    check_command(command)


def test_the_commands_are_found_and_the_check_catches_a_wrong_one() -> None:
    commands = {command for _, command in COMMANDS}
    # Those the runbooks send the on-call to.
    assert "python -m services.router.ledger trim --copied-only" in commands
    assert "python -m services.router.money_check ledger-spend --repair" in commands
    assert any(c.startswith("llmrouter budgets --set") for c in commands)
    with pytest.raises(AssertionError, match="--copied-onyl is no flag"):
        check_command("python -m services.router.ledger trim --copied-onyl")
    with pytest.raises(AssertionError, match="'trimm' is none of its subcommands"):
        check_command("python -m services.router.ledger trimm --out FILE")
    with pytest.raises(AssertionError, match="--format is no flag"):
        check_command("llmrouter stats --format csv")  # a flag of `ledger export`, not of stats
