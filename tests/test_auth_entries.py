"""A gRPC service's callers and tokens (llmrouter/auth.py) name one identity per token and one right per caller: a
token listed for two identities, or a caller listed twice with two tenants (or once for a tenant and once for any),
is refused as the service starts, as the edge refuses a key given to two tenants. Taken as the last entry read (the
token file after ROUTER_AUTH_TOKENS, which add up), the holder of a token meant for a tenant-bound service paid as
another identity, perhaps one that may act for every tenant, and nothing said so."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from llmrouter.auth import Identity, parse_callers, parse_tokens, token_digest
from llmrouter.settings import load_settings
from services.router.settings import RouterSettings

TOKEN = token_digest("sk-batch-service")


def test_a_token_given_to_two_identities_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^line 2 gives a token already given to 'batch' \(line 1\)$"):
        parse_tokens([("line 1", f"{TOKEN}=batch"), ("line 2", f"{TOKEN}=edge")])
    repeated = [("line 1", f"{TOKEN}=batch"), ("line 2", f"{TOKEN}=batch")]
    assert parse_tokens(repeated) == {bytes.fromhex(TOKEN): "batch"}  # repeated: one


def test_a_token_in_the_variable_and_the_file_for_two_identities_refuses_the_settings(tmp_path) -> None:
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text(f"{TOKEN}=edge\n")
    with pytest.raises(ValidationError, match="already given to 'batch'"):
        RouterSettings(auth="token", auth_tokens=f"{TOKEN}=batch", auth_tokens_file=tokens_file)


def test_the_refusal_names_where_each_entry_is_as_the_operator_finds_it_and_no_secret(
    tmp_path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Numbered among the variable's entries and the file's non-blank lines together, the refusal pointed at a line
    of the file that was another (or none): the duplicate on the file's first line was 'line 3'. It now names the
    variable or the file, the entry or the file's own line, and the identity the token was given to first."""
    other = token_digest("sk-other-service")
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text(f"\n{other}=svc\n\n{TOKEN}=edge\n")
    monkeypatch.setenv("ROUTER_AUTH", "token")
    monkeypatch.setenv("ROUTER_AUTH_TOKENS", f"{TOKEN}=batch")
    monkeypatch.setenv("ROUTER_AUTH_TOKENS_FILE", str(tokens_file))
    with pytest.raises(SystemExit):
        load_settings(RouterSettings)
    refusal = capsys.readouterr().err
    assert (
        "ROUTER_AUTH_TOKENS_FILE line 4 gives a token already given to 'batch' (ROUTER_AUTH_TOKENS entry 1)" in refusal
    ), refusal
    assert TOKEN not in refusal and "sk-batch-service" not in refusal and other not in refusal


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


def test_the_tokens_file_takes_comments_and_blank_lines_as_the_edges_key_file_does(tmp_path) -> None:
    """A `#` line, a comment after an entry or a blank line in the tokens file (or the variable) was refused as a token
    entry, or stopped the service, where the edge's key file of the same shape takes them: now both read them alike
    (llmrouter/setting_entries.py), a refusal still naming the file's own line."""
    other = token_digest("sk-other-service")
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text(
        f"# the batch service's, rotated monthly\n\n{TOKEN}=batch  # since 2026-12\n   #\n{other}=svc\n"
    )
    settings = RouterSettings(
        auth="token", auth_tokens=f"{token_digest('sk-edge')}=edge # the edge", auth_tokens_file=tokens_file
    )
    assert parse_tokens(settings.token_entries()) == {
        bytes.fromhex(token_digest("sk-edge")): "edge",
        bytes.fromhex(TOKEN): "batch",
        bytes.fromhex(other): "svc",
    }
    tokens_file.write_text(f"# tokens\n\n{TOKEN}=batch # one\nnot-a-digest=svc # two\n")
    with pytest.raises(ValidationError, match=r"ROUTER_AUTH_TOKENS_FILE line 4: token entries are sha256-hex=identity"):
        RouterSettings(auth="token", auth_tokens_file=tokens_file)


def test_a_tokens_file_of_comments_alone_gives_no_token(tmp_path) -> None:
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text("# no service may call yet\n\n")
    with pytest.raises(ValidationError, match="ROUTER_AUTH=token needs ROUTER_AUTH_TOKENS or ROUTER_AUTH_TOKENS_FILE"):
        RouterSettings(auth="token", auth_tokens_file=tokens_file)


def test_a_comment_in_the_tokens_variable_ends_at_its_line_not_at_a_comma(tmp_path) -> None:
    """`#` starts a comment to the end of its line (llmrouter/setting_entries.py): a line of the variable commented out
    with two entries on it stays out. Split at commas before the comment was cut, the second entry was read as a
    token, and its holder called as that identity, nothing said. A commented line is one entry of the variable's,
    dropped."""
    retired, other = token_digest("sk-retired"), token_digest("sk-other")
    variable = f"{TOKEN}=batch\n# retired: {retired}=edge, {other}=svc\n{token_digest('sk-edge')}=edge"
    settings = RouterSettings(auth="token", auth_tokens=variable)
    assert parse_tokens(settings.token_entries()) == {
        bytes.fromhex(TOKEN): "batch",
        bytes.fromhex(token_digest("sk-edge")): "edge",
    }
    assert [place for place, _ in settings.token_entries()] == [
        "ROUTER_AUTH_TOKENS entry 1",
        "ROUTER_AUTH_TOKENS entry 3",
    ]
