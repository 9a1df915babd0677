"""Human output for the CLI: aligned tables and a progress bar on standard error (so --json output stays
clean on standard output)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import IO, TypeVar

T = TypeVar("T")


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers], *([("" if c is None else str(c)) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def progress(items: Sequence[T], label: str, out: IO[str] | None = None) -> Iterator[T]:
    """Yield the items, drawing `label [#####     ] n/total` as they go (only on a terminal)."""
    stream = out if out is not None else sys.stderr
    draw = stream.isatty()
    total, started = len(items), time.monotonic()
    for done, item in enumerate(items):
        if draw:
            filled = int(30 * done / max(total, 1))
            stream.write(f"\r{label} [{'#' * filled}{' ' * (30 - filled)}] {done}/{total}")
            stream.flush()
        yield item
    if draw:
        stream.write(f"\r{label} [{'#' * 30}] {total}/{total} in {time.monotonic() - started:.1f} s\n")
        stream.flush()
