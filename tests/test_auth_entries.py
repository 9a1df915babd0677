"""A gRPC service's callers and tokens (llmrouter/auth.py) name one identity per token and one right per caller: a
token listed for two identities, or a caller listed twice with two tenants (or once for a tenant and once for any),
is refused as the service starts, as the edge refuses a key given to two tenants. Taken as the last entry read (the
token file after ROUTER_AUTH_TOKENS, which add up), the holder of a token meant for a tenant-bound service paid as
another identity, perhaps one that may act for every tenant, and nothing said so."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from llmrouter.auth import Identity, parse_callers, parse_tokens, token_digest
from services.router.settings import RouterSettings

TOKEN = token_digest("sk-batch-service")


def test_a_token_given_to_two_identities_is_refused() -> None:
    with pytest.raises(ValueError, match="line 2 gives a token already given to another identity"):
        parse_tokens([f"{TOKEN}=batch", f"{TOKEN}=edge"])
    assert parse_tokens([f"{TOKEN}=batch", f"{TOKEN}=batch"]) == {bytes.fromhex(TOKEN): "batch"}  # repeated: one


def test_a_token_in_the_variable_and_the_file_for_two_identities_refuses_the_settings(tmp_path) -> None:
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text(f"{TOKEN}=edge\n")
    with pytest.raises(ValidationError, match="already given to another identity"):
        RouterSettings(auth="token", auth_tokens=f"{TOKEN}=batch", auth_tokens_file=tokens_file)


@pytest.mark.parametrize("entries", ["batch=acme,batch=globex", "batch=acme,batch=*", "batch,batch=*"])
def test_a_caller_listed_with_two_rights_is_refused(entries: str) -> None:
    with pytest.raises(ValueError, match="caller 'batch' is listed twice"):
        parse_callers(entries)
    with pytest.raises(ValidationError, match="listed twice"):
        RouterSettings(auth="none", callers=entries)


def test_a_caller_listed_twice_alike_is_one() -> None:
    assert parse_callers("batch=acme,edge=*,batch=acme") == {
        "batch": Identity("batch", "acme"),
        "edge": Identity("edge", None, may_act_for_tenants=True),
    }
    assert parse_callers("batch,batch=batch") == {"batch": Identity("batch", "batch")}  # the same right, spelt two ways
