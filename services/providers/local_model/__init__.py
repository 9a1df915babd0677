"""SmolLM2-135M-Instruct served in-process by onnxruntime-genai: built once at setup (`build.py`), loaded by
the local gateway. Importing this package loads nothing heavy."""
