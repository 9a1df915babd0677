"""The entries of a credentials setting given two ways, which add up: a variable (comma- or newline-separated) and a
file (one entry a line). The edge's API keys (EDGE_API_KEYS, EDGE_API_KEYS_FILE) and a gRPC service's tokens
(<PREFIX>_AUTH_TOKENS, <PREFIX>_AUTH_TOKENS_FILE) share the format: `#` starts a comment, to the end of its line, and
a blank entry is none. No entry of either holds a `#` (a tenant or identity and a hex digest), so a comment is never
part of one."""

from __future__ import annotations

from pathlib import Path


def uncommented(line: str) -> str:
    """The line up to its comment."""
    return line.split("#", 1)[0]


def bare_entry(entry: str) -> str:
    """The entry without its comment and the blanks around it: '' for a comment or a blank line."""
    return uncommented(entry).strip()


def setting_entries(variable: str, text: str, path: Path | None) -> list[tuple[str, str]]:
    """(where, entry) for each entry of the variable and then of its file, comments and blank entries dropped, each
    placed as an operator finds it: `EDGE_API_KEYS entry 2`, `EDGE_API_KEYS_FILE line 3` (the file's own lines). The
    variable's comments are cut from its lines before they are split at commas: a comment runs to the end of its line,
    entries and commas in it too."""
    given = enumerate((entry for line in text.splitlines() for entry in uncommented(line).split(",")), 1)
    entries = [(f"{variable} entry {number}", entry) for number, entry in given]
    if path is not None:
        entries += file_entries(variable, path.read_text())
    return [(place, bare) for place, entry in entries if (bare := bare_entry(entry))]


def file_entries(variable: str, text: str) -> list[tuple[str, str]]:
    """(where, entry) for each entry of the variable's file, as read (`text`), placed by its own line:
    `EDGE_API_KEYS_FILE line 3`. Comments and blank lines dropped."""
    read = enumerate(text.splitlines(), 1)
    return [(f"{variable}_FILE line {number}", bare) for number, line in read if (bare := bare_entry(line))]
