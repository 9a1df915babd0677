"""`python -m services.ledger export|trim|sink`: the SQL ledger's commands (services/ledger/commands.py)."""

from __future__ import annotations

import asyncio
import sys

from services.ledger.stop_signals import StopSignals

if __name__ == "__main__":
    # The sink's stop signals are caught before the commands' modules load (about a second): a pod stopped as it
    # starts ends its start-up cleanly, rather than being killed.
    signals = StopSignals() if sys.argv[1:2] == ["sink"] else None
    from services.ledger.commands import main

    try:
        sys.exit(asyncio.run(main(sys.argv[1:], signals)))
    except KeyboardInterrupt:
        sys.exit(130)
