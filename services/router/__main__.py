from llmrouter.server import run_service
from llmrouter.settings import load_settings
from services.router import build
from services.router.settings import RouterSettings

settings = load_settings(RouterSettings)
run_service("router", settings, lambda: build(settings))
