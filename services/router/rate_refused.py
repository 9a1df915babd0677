"""The accounts whose requests per minute this router has seen used up in the current rate window. A completion's
rate limit is counted at its admission, after it is routed (one refused for a budget counted too: Admission.admit):
past the limit, each one had the shared classifier score its prompt before it was refused, so completions sent without
end kept the classifier as busy as uncounted Decides did. A window's count only grows, so once the store refused an
account's request as rate limited, its later requests of the window are refused before they are routed, with no call
to the store. So is the tokens charged in a window (the tokens per minute): refused for those, the account's later
requests of the window are too. Each router learns it on its own, by one refusal; it keeps the refused accounts of one
window only, each with the limit it reached."""

from __future__ import annotations

from services.router.store import Account, money_now
from services.router.store.keys import rate_window


class RateRefused:
    def __init__(self) -> None:
        self._window = -1
        self._accounts: dict[Account, str] = {}

    def add(self, account: Account, window: int, limit: str) -> None:
        """`window`: the one the store counted the refused request in: an admission's, the one it named to the store
        (Store.admit's counted_at); a Decide's, read before the store was called (the store's own is that or a later
        one). Its reply may arrive in the next window, whose count the refusal says nothing of: a refusal of a window
        already over is not kept. `limit`: the one reached, as the store named it ('rate' or
        'tokens')."""
        if window == rate_window(money_now()):
            self._current()[account] = limit

    def limit_reached(self, account: Account) -> str | None:
        """The limit the store refused one of the account's requests for in the current window; None for none."""
        return self._current().get(account)

    def _current(self) -> dict[Account, str]:
        window = rate_window(money_now())
        if window != self._window:
            self._window, self._accounts = window, {}
        return self._accounts
