"""Query parameters as the edge's routes read them: each at most once. Starlette keeps the last of a repeated
parameter (`?limit=1&limit=100`), a proxy or a log in front may read the first: which one a caller meant is
ambiguous, so a repeat is a 400 naming it, as a repeated Authorization or x-router-* header is. No parameter a route
reads here is a list by design (OpenAI's lists, as a stored response's include[], are on routes the edge does not
serve)."""

from __future__ import annotations

from starlette.datastructures import QueryParams

from services.edge.openai_api import ApiError


def single(params: QueryParams, name: str) -> str | None:
    """The parameter's value, None when it is not given."""
    values = params.getlist(name)
    if len(values) > 1:
        message = f"query parameter {name!r} given {len(values)} times: give it once"
        raise ApiError(400, message, param=name, code="duplicate_parameter")
    return values[0] if values else None
