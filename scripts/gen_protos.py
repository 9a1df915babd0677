"""Generate the Python gRPC code in llmrouter/v1 from protos/, or check that it has not drifted.

Usage: python scripts/gen_protos.py [--check]
"""

from __future__ import annotations

import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
PACKAGE = Path("llmrouter") / "v1"
HEADER = '"""Generated from protos/llmrouter/v1 by scripts/gen_protos.py: do not edit."""\n'


def generate(out: Path) -> list[Path]:
    sources = sorted((PROTOS / PACKAGE).glob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(str(s) for s in sources),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    (out / PACKAGE / "__init__.py").write_text(HEADER)
    return sorted(p.relative_to(out) for p in (out / PACKAGE).iterdir() if p.is_file())


def main() -> int:
    check = "--check" in sys.argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        target = ROOT / PACKAGE
        if check:
            present = sorted(p.relative_to(ROOT) for p in target.iterdir() if p.is_file()) if target.exists() else []
            drifted = [
                str(p)
                for p in fresh
                if not (ROOT / p).exists() or not filecmp.cmp(Path(tmp) / p, ROOT / p, shallow=False)
            ]
            extra = [str(p) for p in present if p not in fresh]
            if drifted or extra:
                print(
                    f"generated gRPC code drifted from protos/: {drifted + extra}; run `make protos`", file=sys.stderr
                )
                return 1
            print("generated gRPC code matches protos/")
            return 0
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        for p in fresh:
            shutil.copy2(Path(tmp) / p, ROOT / p)
        print(f"wrote {len(fresh)} files to {target.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
