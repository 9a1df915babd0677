"""The README's Layout table lists every service package: a reader looking for where a part lives (the Batch API's
routes and runs were in none of its rows) finds it there."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_layout_lists_every_service_package() -> None:
    readme = (ROOT / "README.md").read_text()
    layout = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `(services/[a-z_]+/)` \|", layout, re.M))
    packages = {f"services/{p.parent.name}/" for p in (ROOT / "services").glob("*/__init__.py")}
    assert packages <= listed, f"README.md, Layout: no row for {sorted(packages - listed)}"
