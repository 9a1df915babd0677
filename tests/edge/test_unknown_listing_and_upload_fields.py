"""A query parameter a file, batch or budget listing does not take, or an upload's form field other than file and
purpose, is a 400 naming it, as the stats route refuses one: ignored, `GET /v1/batches?order=asc` (OpenAI's batch
listing has no order) listed newest first, and a file uploaded with OpenAI's expires_after of an hour was kept the
retention (30 days). The real edge, its batch store in process; the official SDK as the caller."""

from __future__ import annotations

import typing
from collections.abc import AsyncIterator

import openai
import pytest
from openai.types import batch_list_params, file_list_params
from starlette.datastructures import FormData, QueryParams

from services.batches.api import BATCH_LISTING, FILE_LISTING, refuse_unknown_fields
from services.edge.given_once import known_only
from services.edge.keys import key_line
from services.edge.openai_api import ApiError
from tests.edge.conftest import keyed_edge_without_router

KEY = "sk-fields"
LINE = b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": []}}\n'


@pytest.fixture
async def client() -> AsyncIterator[openai.AsyncOpenAI]:
    async with keyed_edge_without_router(key_line("fields", KEY), KEY) as http:
        sdk = openai.AsyncOpenAI(base_url=str(http.base_url), api_key=KEY, max_retries=0)
        async with sdk:
            yield sdk


def test_each_listing_takes_the_sdks_query_parameters() -> None:
    assert set(FILE_LISTING) == set(typing.get_type_hints(file_list_params.FileListParams))
    assert set(BATCH_LISTING) == set(typing.get_type_hints(batch_list_params.BatchListParams))


def test_of_several_unknown_parameters_the_first_by_name_is_named() -> None:
    """The same one whatever order they came in, or however this process hashes strings."""
    names = [chr(letter) * 2 for letter in range(ord("a"), ord("z") + 1)]
    named = set()
    for query in ("&".join(f"{name}=1" for name in order) for order in (names, names[::-1])):
        with pytest.raises(ApiError) as caught:
            known_only(QueryParams(query), BATCH_LISTING, "a batch listing takes")
        named.add(caught.value.param)
    assert named == {"aa"}


def test_a_long_expiry_field_is_named_by_its_first_64_characters() -> None:
    """A caller's name is quoted, not echoed whole: a 400 is no amplifier of what its caller sent."""
    name = "expires_after[" + "x" * 2000 + "]"
    with pytest.raises(ApiError) as caught:
        refuse_unknown_fields(FormData([("purpose", "batch"), (name, "3600")]))
    assert (caught.value.param, caught.value.code) == (name[:64], "unsupported_parameter")
    assert len(caught.value.message) < 200, caught.value.message


@pytest.mark.parametrize(
    ("listing", "query", "param"),
    [
        ("batches", {"order": "asc"}, "order"),
        ("batches", {"purpose": "batch"}, "purpose"),
        ("files", {"limt": "1"}, "limt"),
        ("files", {"order": "asc", "sort": "created_at"}, "sort"),
    ],
)
async def test_a_query_parameter_the_listing_does_not_take_is_a_400_naming_it(
    client: openai.AsyncOpenAI, listing: str, query: dict[str, str], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await getattr(client, listing).list(extra_query=query)
    error = caught.value.body
    assert isinstance(error, dict)
    assert (error["param"], error["code"]) == (param, "unknown_parameter")
    kind = {"batches": "batch", "files": "file"}[listing]
    assert error["message"].startswith(f"unknown query parameter {param!r}: a {kind} listing takes after, limit")


async def test_a_query_parameter_on_the_budgets_is_a_400_naming_it(client: openai.AsyncOpenAI) -> None:
    """GET /v1/router/budgets takes none: an admin's `?tenant=acme` listed every tenant's budget."""
    with pytest.raises(openai.BadRequestError) as caught:
        await client.get("/router/budgets", cast_to=object, options={"params": {"tenant": "acme"}})
    error = caught.value.body
    assert isinstance(error, dict)
    assert (error["param"], error["code"]) == ("tenant", "unknown_parameter")
    assert error["message"] == "unknown query parameter 'tenant': budgets take none"


async def test_the_query_parameters_a_listing_takes_are_served(client: openai.AsyncOpenAI) -> None:
    files = await client.files.list(limit=5, order="asc", purpose="batch")
    batches = await client.batches.list(limit=5)
    assert (files.data, batches.data) == ([], [])


async def test_an_upload_expiring_is_unsupported_and_stores_nothing(client: openai.AsyncOpenAI) -> None:
    expiry = {"anchor": "created_at", "seconds": 3600}
    with pytest.raises(openai.BadRequestError) as caught:
        await client.files.create(file=("b.jsonl", LINE), purpose="batch", expires_after=expiry)  # type: ignore[arg-type]
    error = caught.value.body
    assert isinstance(error, dict)
    assert (error["param"], error["code"]) == ("expires_after[anchor]", "unsupported_parameter")
    assert "kept until deleted" in error["message"]
    assert (await client.files.list()).data == []
    stored = await client.files.create(file=("b.jsonl", LINE), purpose="batch")
    assert [file.id for file in (await client.files.list()).data] == [stored.id]


async def test_an_upload_field_openai_does_not_know_is_a_400_naming_it(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.files.create(file=("b.jsonl", LINE), purpose="batch", extra_body={"purpse": "batch"})
    error = caught.value.body
    assert isinstance(error, dict)
    assert (error["param"], error["code"]) == ("purpse", "unknown_parameter")
    assert (await client.files.list()).data == []
