"""Every error reason the services can send (a ServiceError's, in its google.rpc.ErrorInfo) is in docs/conventions.md's
table of reasons, with its gRPC code and what the edge answers: a caller, or the on-call reading a log line, that meets
a reason the table lacks cannot tell what it means or whether to retry. The code is read, not run: a reason is an
upper-case string written next to a `grpc.StatusCode` (a `ServiceError(code, "REASON", ...)`, or a table of
`(code, "REASON", ...)`), given to `invalid` as its reason, or a module's constant so written."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

from tests.test_documented_commands import ROOT

CONVENTIONS = ROOT / "docs" / "conventions.md"
CODE = [ROOT / "llmrouter", ROOT / "services"]
GENERATED = ROOT / "llmrouter" / "v1"
REASON = re.compile(r"[A-Z][A-Z]+(?:_[A-Z]+)*")


def sources() -> Iterator[Path]:
    for top in CODE:
        yield from (path for path in sorted(top.rglob("*.py")) if GENERATED not in path.parents)


def _is_status_code(node: ast.expr) -> bool:
    return isinstance(node, ast.Attribute) and ast.unparse(node.value).endswith("StatusCode")


def _text(node: ast.expr, constants: dict[str, str]) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        return constants.get(node.id)
    return None


def reasons_in(tree: ast.Module, constants: dict[str, str]) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call | ast.Tuple):
            items = node.args if isinstance(node, ast.Call) else node.elts
            if isinstance(node, ast.Call):
                items = [*items, *(k.value for k in node.keywords if k.arg == "reason")]
            beside_a_code = any(_is_status_code(item) for item in items)
            called = isinstance(node, ast.Call) and ast.unparse(node.func).split(".")[-1] in {"ServiceError", "invalid"}
            if beside_a_code or called:
                texts = [_text(item, constants) for item in items]
                found |= {t for t in texts if t is not None and REASON.fullmatch(t)}
    return found


def module_constants(tree: ast.Module) -> dict[str, str]:
    """NAME = "TEXT" at a module's top, as reasons are named (errors.OVERLOADED, honoured.REASON)."""
    return {
        target.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
        for target in node.targets
        if isinstance(target, ast.Name)
    }


def code_reasons() -> set[str]:
    """A name is the module's own constant, else one a module of the code defines (imported), if any."""
    trees = [ast.parse(path.read_text()) for path in sources()]
    everyone = {name: text for tree in trees for name, text in module_constants(tree).items()}
    return set().union(*(reasons_in(tree, {**everyone, **module_constants(tree)}) for tree in trees))


def table_reasons(text: str) -> set[str]:
    """The reasons docs/conventions.md's table lists, in the first cell of its rows, outside parentheses."""
    section = text.split("| reason | gRPC code | edge HTTP |", 1)[1].split("\n\n", 1)[0]
    found: set[str] = set()
    for row in section.splitlines()[2:]:
        first = row.split("|")[1]
        while re.search(r"\([^()]*\)", first):
            first = re.sub(r"\([^()]*\)", "", first)
        found |= set(REASON.findall(first))
    return found


def test_the_code_raises_the_reasons_it_is_known_to() -> None:
    """The reading finds reasons however they are written: literally, from a module's constant, from a table."""
    assert {"KEY_MOVING", "STORE_UNAVAILABLE", "OVERLOADED", "UNSUPPORTED_PARAMETER", "UPSTREAM_RATE_LIMITED"} <= (
        code_reasons()
    )


def test_every_reason_the_code_raises_is_in_the_conventions_table() -> None:
    missing = code_reasons() - table_reasons(CONVENTIONS.read_text())
    assert not missing, f"docs/conventions.md's table of reasons lacks {sorted(missing)}"


def test_a_reason_left_out_of_the_table_is_found() -> None:
    text = CONVENTIONS.read_text()
    assert "KEY_MOVING" in table_reasons(text)
    without = "\n".join(line for line in text.splitlines() if not line.startswith("| KEY_MOVING "))
    assert "KEY_MOVING" not in table_reasons(without)
