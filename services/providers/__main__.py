"""python -m services.providers: serve llmrouter.v1.Provider until SIGTERM."""

from llmrouter.server import run_service
from llmrouter.settings import load_settings
from services.providers.service import build
from services.providers.settings import ProvidersSettings


def main() -> None:
    settings = load_settings(ProvidersSettings)
    run_service("providers", settings, lambda: build(settings))  # the `service` label of metrics and logs


if __name__ == "__main__":
    main()
