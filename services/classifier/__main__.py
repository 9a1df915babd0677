"""python -m services.classifier: serve llmrouter.v1.Classifier."""

from __future__ import annotations

import sys

from llmrouter.server import run_service
from llmrouter.settings import load_settings
from services.classifier import build
from services.classifier.model import ArtefactMissing, check_artefacts
from services.classifier.settings import ClassifierSettings


def main() -> None:
    settings = load_settings(ClassifierSettings)
    try:
        check_artefacts(settings.model_dir)
    except ArtefactMissing as exc:
        print(str(exc), file=sys.stderr)
        raise SystemExit(2) from None
    run_service("classifier", settings, lambda: build(settings))


if __name__ == "__main__":
    main()
