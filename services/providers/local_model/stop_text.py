"""The local model's text cut before the first stop sequence it writes (OpenAI's `stop`), as it streams:
onnxruntime-genai takes token ids to stop at, not text. Text no stop sequence can begin in is released at once; a
tail that may be one's beginning is held until the next piece says whether it is."""

from __future__ import annotations

from collections.abc import Sequence


class _Sequence:
    """One stop sequence, matched as the text arrives a character at a time (Knuth-Morris-Pratt): `matched` is the
    longest beginning of it the text ends with. Linear in the text, however long the sequence."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.matched = 0
        # fallback[i]: the longest proper beginning of text[:i + 1] that is also its end.
        self.fallback = [0] * len(text)
        k = 0
        for i in range(1, len(text)):
            while k and text[i] != text[k]:
                k = self.fallback[k - 1]
            if text[i] == text[k]:
                k += 1
            self.fallback[i] = k

    def step(self, char: str) -> bool:
        """Whether the text, `char` added, ends with the whole sequence."""
        while self.matched and char != self.text[self.matched]:
            self.matched = self.fallback[self.matched - 1]
        if char == self.text[self.matched]:
            self.matched += 1
        return self.matched == len(self.text)


class StopText:
    """Pieces of text in, the text to send out: cut before the first stop sequence completed (`stopped` then), as the
    model stops as soon as one is written."""

    def __init__(self, sequences: Sequence[str]) -> None:
        self.sequences = [_Sequence(s) for s in sequences if s]  # "" holds no sequence
        self.held = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        """What `piece` releases: all that no stop sequence can begin in, or once one is completed, what came before
        it (and nothing after)."""
        start = len(self.held)
        self.held += piece
        for end, char in enumerate(piece, start + 1):  # end: the held text's length up to this character
            # Every sequence steps; of those completed here, the longest began first.
            completed = [len(s.text) for s in self.sequences if s.step(char)]
            if completed:
                self.stopped = True
                return self.held[: end - max(completed)]
        keep = max((s.matched for s in self.sequences), default=0)
        released, self.held = self.held[: len(self.held) - keep], self.held[len(self.held) - keep :]
        return released

    def rest(self) -> str:
        """The tail held back, released as the text ends with no stop sequence completed."""
        held, self.held = self.held, ""
        return held
