"""A real edge over loopback in front of the recording stand-in router (tests/fakes/recording_router.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from services.edge.settings import EdgeSettings
from tests.fakes.recording_router import RecordingRouter
from tests.integration.conftest import free_port, served_edge, served_router


@dataclass
class Edge:
    base_url: str
    router: RecordingRouter


@pytest.fixture
async def edge() -> AsyncIterator[Edge]:
    router = RecordingRouter()
    async with served_router(router) as router_addr:
        settings = EdgeSettings(port=free_port(), router_addr=router_addr, access_log="off", metrics_port=0)
        async with served_edge(settings) as base_url:
            yield Edge(base_url, router)
