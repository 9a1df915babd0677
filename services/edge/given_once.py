"""Query parameters and form fields as the edge's routes read them: each at most once. Starlette keeps the last of a
repeated one (`?limit=1&limit=100`, a form's `purpose` twice), a proxy or a log in front may read the first: which one
a caller meant is ambiguous, so a repeat is a 400 naming it, as a repeated Authorization or x-router-* header is. None
that a route reads here is a list by design (OpenAI's lists, as a stored response's include[], are on routes the edge
does not serve)."""

from __future__ import annotations

from collections.abc import Collection
from typing import TypeVar

from starlette.datastructures import ImmutableMultiDict, QueryParams

from services.edge.openai_api import ApiError

V = TypeVar("V")


def single(values: ImmutableMultiDict[str, V], name: str, kind: str = "query parameter") -> V | None:
    """The value given for name, None when none is."""
    given = values.getlist(name)
    if len(given) > 1:
        message = f"{kind} {name!r} given {len(given)} times: give it once"
        raise ApiError(400, message, param=name, code="duplicate_parameter")
    return given[0] if given else None


def known_only(params: QueryParams, known: Collection[str], takes: str) -> None:
    """A 400 naming the first query parameter not among `known`, and listing those (`takes`: what takes them, as
    "stats take"): ignored, a misspelt bound or order (`untill`, `order=asc` where no order is taken) answered 200 with
    another window or page than its caller believed it had asked for."""
    unknown = sorted(set(params) - set(known))
    if unknown:
        shown = unknown[0][:64]
        told = f"unknown query parameter {shown!r}: {takes} {', '.join(known) or 'none'}"
        raise ApiError(400, told, param=shown, code="unknown_parameter")
