"""The standalone sink's stop signals (SIGTERM, as Kubernetes stops a pod, and SIGINT), caught from its first moment:
one that comes during its start-up (a second of imports, then PostgreSQL reached and its table prepared, up to the
connect timeout while the server does not answer) ends it cleanly, as one that comes while it copies does, where
Python's default would kill it (exit -15). Imports no more than it needs, being loaded before the rest."""

from __future__ import annotations

import asyncio
import signal
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """Catches the stop signals from its making; event() hands them over to the running loop."""

    def __init__(self) -> None:
        self.received = False
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._receive)

    def _receive(self, signum: int, frame: FrameType | None) -> None:
        self.received = True

    def event(self) -> asyncio.Event:
        """An event that the stop signals set from now on, in the running loop, set already if one came before."""
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, stopping.set)
        if self.received:
            stopping.set()
        return stopping
