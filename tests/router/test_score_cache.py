"""The router's cache of classifier scores: bounded, least recently used out first, emptied by a new model."""

from __future__ import annotations

from services.router.score_cache import ScoreCache, digest


def test_a_kept_score_comes_back_with_its_version() -> None:
    cache = ScoreCache(10)
    cache.put(digest("What is 2 + 2?"), {"cheap": 0.9, "strong": 0.95}, "v1")
    assert cache.get(digest("What is 2 + 2?")) == ({"cheap": 0.9, "strong": 0.95}, "v1")
    assert cache.get(digest("What is 2 + 3?")) is None


def test_the_key_is_the_exact_text() -> None:
    cache = ScoreCache(10)
    cache.put(digest("What is 2 + 2?"), {"cheap": 0.9}, "v1")
    for near in ("What is 2 + 2? ", "what is 2 + 2?", "What is 2 + 2?\n"):
        assert cache.get(digest(near)) is None


def test_bounded_least_recently_used_out_first() -> None:
    cache = ScoreCache(3)
    for i in range(3):
        cache.put(digest(f"prompt {i}"), {"m": i / 10}, "v1")
    assert cache.get(digest("prompt 0")) is not None  # used: now the most recent
    cache.put(digest("prompt 3"), {"m": 0.3}, "v1")
    assert len(cache) == 3
    assert cache.get(digest("prompt 1")) is None  # the least recently used went
    assert all(cache.get(digest(f"prompt {i}")) is not None for i in (0, 2, 3))
    for i in range(100):
        cache.put(digest(f"more {i}"), {"m": 0.5}, "v1")
    assert len(cache) == 3


def test_a_new_model_version_empties_the_cache() -> None:
    cache = ScoreCache(10)
    cache.put(digest("a"), {"m": 0.1}, "v1")
    cache.put(digest("b"), {"m": 0.2}, "v2")  # the classifier now answers with another model
    assert cache.get(digest("a")) is None
    assert cache.get(digest("b")) == ({"m": 0.2}, "v2")
    assert len(cache) == 1


def test_zero_entries_keeps_nothing() -> None:
    cache = ScoreCache(0)
    cache.put(digest("a"), {"m": 0.1}, "v1")
    assert cache.get(digest("a")) is None and len(cache) == 0


def test_returned_scores_are_a_copy() -> None:
    cache = ScoreCache(10)
    cache.put(digest("a"), {"m": 0.1}, "v1")
    scores, _ = cache.get(digest("a")) or ({}, "")
    scores["m"] = 1.0
    assert cache.get(digest("a")) == ({"m": 0.1}, "v1")
