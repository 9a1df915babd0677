"""API keys at the edge: the key file holds digests in an unambiguous format, lookups are constant time, and an
edge on a public address never starts open to everyone by accident."""

from __future__ import annotations

import hashlib
import hmac
import subprocess
import sys

import pytest
from pydantic import SecretStr, ValidationError

from llmrouter.settings import load_settings
from services.edge import keys
from services.edge.keys import key_line, parse_keys
from services.edge.settings import EdgeSettings, key_ring
from tests.conftest import ROOT

ODD_KEYS = ["c2stYWNtZQ==", "a,b=c", "=acme", "k#not-a-comment", "ключ-ü"]


def test_any_key_resolves_to_its_tenant_padding_commas_and_all() -> None:
    ring = parse_keys("\n".join(key_line(f"t{i}", key) for i, key in enumerate(ODD_KEYS)))
    for i, key in enumerate(ODD_KEYS):
        assert ring.tenant_for(key) == f"t{i}"
    assert ring.tenant_for("c2stYWNtZQ") is None  # the key without its padding is another key
    assert ring.tenant_for("acme") is None


def test_the_file_holds_digests_not_keys() -> None:
    line = key_line("acme", "sk-secret=")
    assert "sk-secret" not in line
    assert line == f"acme {hashlib.sha256(b'sk-secret=').hexdigest()}"


def test_empty_key_is_refused_everywhere() -> None:
    with pytest.raises(ValueError, match="empty key"):
        parse_keys(f"acme {hashlib.sha256(b'').hexdigest()}")
    with pytest.raises(ValueError, match="empty"):
        key_line("acme", "")
    assert parse_keys(key_line("acme", "sk-a")).tenant_for("") is None


@pytest.mark.parametrize(
    "text",
    [
        "sk-good=acme",  # the old key=tenant format: ambiguous, refused rather than guessed
        "acme sk-raw-key-instead-of-a-digest",
        f"acme {'ab' * 31}",  # a digest too short
        f"Acme Corp {'ab' * 32}",
        f"-acme {'ab' * 32}",
    ],
)
def test_a_malformed_line_is_refused_naming_it(text: str) -> None:
    with pytest.raises(ValueError, match=r"line 2(?: is not|'s tenant is refused)"):
        parse_keys(f"# keys\n{text}\n")


def test_one_key_for_two_tenants_is_refused() -> None:
    with pytest.raises(ValueError, match="another tenant"):
        parse_keys(f"{key_line('acme', 'sk-a')}\n{key_line('globex', 'sk-a')}")


def test_lookup_compares_the_digest_with_every_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Constant time: one compare_digest per entry whether the key is first, last or unknown, over digests (the
    raw key is never compared or used as a dict key)."""
    ring = parse_keys("\n".join(key_line(f"t{i}", f"sk-{i}") for i in range(5)))
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(keys.hmac, "compare_digest", counting)
    for key, tenant in (("sk-0", "t0"), ("sk-4", "t4"), ("sk-unknown", None)):
        compared.clear()
        assert ring.tenant_for(key) == tenant
        assert len(compared) == 5
        assert all(a == hashlib.sha256(key.encode()).digest() and len(b) == 32 for a, b in compared)


def test_keys_from_the_variable_and_the_file_add_up(tmp_path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"# tenant digest\n{key_line('globex', 'sk-g=')}\n")
    settings = EdgeSettings(
        api_keys=SecretStr(f"{key_line('acme', 'sk-a==')},{key_line('initech', 'sk-i')}"), api_keys_file=path
    )
    ring = settings.key_ring()
    assert [ring.tenant_for(k) for k in ("sk-a==", "sk-i", "sk-g=")] == ["acme", "initech", "globex"]


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::", "edge.internal"])
def test_a_public_edge_without_keys_refuses_to_start(host: str) -> None:
    with pytest.raises(ValidationError, match="EDGE_ALLOW_ANONYMOUS=true"):
        EdgeSettings(host=host)
    assert EdgeSettings(host=host, allow_anonymous=True).allow_anonymous
    assert EdgeSettings(host=host, api_keys=SecretStr(key_line("acme", "sk-a"))).key_ring()


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_a_loopback_edge_may_serve_anonymously(host: str) -> None:
    assert not EdgeSettings(host=host).key_ring()


def test_the_refusal_is_one_clear_line_at_start(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("EDGE_HOST", "0.0.0.0")
    with pytest.raises(SystemExit):
        load_settings(EdgeSettings)
    err = capsys.readouterr().err
    assert "EDGE_ALLOW_ANONYMOUS" in err and "not loopback" in err


def test_a_key_in_the_variable_and_the_file_for_two_tenants_is_refused_where_an_operator_finds_it(
    tmp_path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """Found only once EDGE_API_KEYS and the file were read together, the refusal was said of EDGE_ALLOW_ANONYMOUS,
    at a line counted over both ('line 3' for the file's second): it names both places, and never the digest."""
    path = tmp_path / "keys"
    path.write_text(f"\n{key_line('acme', 'sk-a')}\n")
    monkeypatch.setenv("EDGE_API_KEYS", key_line("globex", "sk-a"))
    monkeypatch.setenv("EDGE_API_KEYS_FILE", str(path))
    with pytest.raises(SystemExit):
        load_settings(EdgeSettings)
    err = capsys.readouterr().err
    said = "EDGE_API_KEYS_FILE line 2 gives a key already given to another tenant, 'globex' (EDGE_API_KEYS entry 1)"
    assert said in err and "ALLOW_ANONYMOUS" not in err, err
    assert key_line("acme", "sk-a").split()[1] not in err


def test_the_key_tool_prints_the_line_to_store() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "services.edge.keys", "acme"],
        input="sk-new-key==\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    assert parse_keys(result.stdout).tenant_for("sk-new-key==") == "acme"


def test_a_byte_order_mark_before_the_key_is_no_part_of_it() -> None:
    """A key file saved by an editor that begins UTF-8 files with a BOM: the BOM is the file's, not the key's, which
    no client sends with one: digested with it, the key was refused for ever."""
    result = run_key_tool("acme", key=b"\xef\xbb\xbfsk-new-key==\r\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == key_line("acme", "sk-new-key==") + "\n"


def run_key_tool(*args: str, key: bytes = b"sk-new-key==\n") -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "services.edge.keys", *args], input=key, capture_output=True, cwd=ROOT, check=False
    )
    return subprocess.CompletedProcess(result.args, result.returncode, result.stdout.decode(), result.stderr.decode())


def test_the_key_tool_says_how_to_use_it() -> None:
    result = run_key_tool("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m services.edge.keys [-h] tenant")
    assert "stdin" in result.stdout


@pytest.mark.parametrize(
    ("args", "key", "said"),
    [
        ((), b"sk-a", "the following arguments are required: tenant"),
        (("acme", "globex"), b"sk-a", "unrecognized arguments: globex"),
        (("acme", "--admin"), b"sk-a", "unrecognized arguments: --admin"),
        (("Acme Corp",), b"sk-a", "a tenant is 1-128 letters"),
        (("acme",), b"", "the key on stdin is empty"),
        (("acme",), b"\xff\xfe", "the key on stdin is not UTF-8"),
        # No client can send these in an Authorization header (the edge's HTTP server refuses the request, 400): a
        # line printed for such a key was a key that never worked.
        (("acme",), b"sk-a\x00b", "the key on stdin has a control character"),
        (("acme",), b"sk-a\nsk-b\n", "the key on stdin has a control character"),
        (("acme",), b"sk-a\x7f", "the key on stdin has a control character"),
        # The edge reads it, but OpenAI's Python SDK cannot send it (tests/edge/test_key_bytes.py): a new key is ASCII.
        (("acme",), "sk-ключ-ü".encode(), "the key on stdin has a character past ASCII"),
        # At either end too: stripped as blanks, they gave the line of another key than the one read.
        (("acme",), "sk-a\u00a0\n".encode(), "the key on stdin has a character past ASCII"),
        (("acme",), "\u3000sk-a".encode(), "the key on stdin has a character past ASCII"),
        (("acme",), "sk-a\u2028".encode(), "the key on stdin has a character past ASCII"),
        (("acme",), b"sk-a\x1c\n", "the key on stdin has a control character"),
    ],
)
def test_bad_arguments_to_the_key_tool_are_a_usage_error(args: tuple[str, ...], key: bytes, said: str) -> None:
    """Status 2 and the usage, as any command-line tool's: not a traceback, nor a line printed for no key."""
    result = run_key_tool(*args, key=key)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: python -m services.edge.keys [-h] tenant")
    assert said in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""


def test_a_key_in_the_old_format_is_refused_without_echoing_it(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("EDGE_API_KEYS", "sk-live-secret=acme")
    with pytest.raises(SystemExit):
        load_settings(EdgeSettings)
    err = capsys.readouterr().err
    assert "EDGE_API_KEYS" in err and "EDGE_API_KEYS entry 1 is not '<tenant> <sha256 hex of the key> [admin]'" in err
    assert "sk-live-secret" not in err


def test_a_line_whose_tenant_breaks_the_rule_says_the_rule(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """The line's shape is right: 'is not <tenant> <sha256 hex of the key>' left the operator comparing it by eye."""
    monkeypatch.setenv("EDGE_API_KEYS", key_line("acme", "sk-acme").replace("acme", "ac/me", 1))
    with pytest.raises(SystemExit):
        load_settings(EdgeSettings)
    err = capsys.readouterr().err
    assert "EDGE_API_KEYS entry 1's tenant is refused: a tenant is 1-128 letters, digits, '_', '.' or '-'," in err


def test_the_admin_role_word_marks_an_admin_key_and_nothing_else_does() -> None:
    ring = parse_keys(f"{key_line('ops', 'sk-root')} admin\n{key_line('acme', 'sk-acme')}")
    assert ring.tenant_for("sk-root") == "ops" and ring.is_admin("sk-root")
    assert ring.tenant_for("sk-acme") == "acme" and not ring.is_admin("sk-acme")
    assert not ring.is_admin("") and not ring.is_admin("sk-unknown")
    with pytest.raises(ValueError, match="line 1"):
        parse_keys(f"{key_line('ops', 'sk-root')} root")  # only `admin` is a role


def test_a_key_is_served_by_its_id_for_its_own_tenant_only() -> None:
    """A batch names its caller by tenant and key id (the router's: the key's digest's first 16 hex digits)."""
    ring = parse_keys(key_line("acme", "sk-a") + "\n" + key_line("globex", "sk-g"))
    acme_id = hashlib.sha256(b"sk-a").hexdigest()[:16]
    assert ring.serves("acme", acme_id)
    assert not ring.serves("globex", acme_id)  # another tenant naming acme's key id
    assert not ring.serves("acme", hashlib.sha256(b"sk-revoked").hexdigest()[:16])
    assert not ring.serves("acme", "anonymous") and not ring.serves("acme", "")


def test_a_large_ring_serves_exactly_its_keys_ids_for_their_tenants() -> None:
    """The lookup is computed once per ring (each adoption pass asks it for every active batch); with many keys it
    still answers for each key's own tenant only."""
    ring = parse_keys("\n".join(f"t{i % 50} {hashlib.sha256(str(i).encode()).hexdigest()}" for i in range(20_000)))
    assert not any(ring.serves("t1", f"{i:016x}") for i in range(2_000))
    assert ring.serves("t7", hashlib.sha256(b"7").hexdigest()[:16])
    assert not ring.serves("t8", hashlib.sha256(b"7").hexdigest()[:16])


def test_a_comment_in_the_keys_variable_ends_at_its_line_not_at_a_comma() -> None:
    """A line of EDGE_API_KEYS commented out, two keys on it, opens the edge to neither: the comment runs to the end of
    its line, as the module says, where the comma after the first key ended it and the second was a key again."""
    variable = f"{key_line('acme', 'sk-a')}\n# retired: {key_line('acme', 'sk-old')}, {key_line('globex', 'sk-g')}"
    ring = key_ring(SecretStr(variable), None)
    assert ring.tenant_for("sk-a") == "acme"
    assert ring.tenant_for("sk-g") is None
    assert ring.tenant_for("sk-old") is None


def test_the_edge_starts_with_a_comment_holding_a_comma_in_its_keys_variable() -> None:
    """EDGE_API_KEYS was checked alone split at every comma, its comments' too: a comment with a comma in it stopped
    the edge, naming a line that is none of the variable's, where the key ring reads it as a comment."""
    settings = EdgeSettings(api_keys=SecretStr(f"{key_line('acme', 'sk-a')}\n# rotated monthly, by ops"))
    assert settings.key_ring().tenant_for("sk-a") == "acme"
