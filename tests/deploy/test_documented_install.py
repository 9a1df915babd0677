"""deploy/README.md's install, as a platform team follows it: the Secrets its `kubectl create secret` lines make are
those the release its `helm upgrade --install` line installs reads, by name and key. A Secret renamed in values.yaml
(or a key) while the README still makes the old one leaves the pods waiting on a volume or variable that never
comes (ContainerCreating, CreateContainerConfigError), with nothing in the chart's own checks failing. Rendered by
helm template with the line's own flags, as the release it installs."""

from __future__ import annotations

import itertools
import re
import shlex
from collections.abc import Iterator

from .support import ROOT, render

README = (ROOT / "deploy" / "README.md").read_text()


def install_lines() -> list[list[str]]:
    """The README's install block, a command per line (continuations joined), each split as the shell splits it."""
    block = README.split("\n## Install\n", 1)[1].split("\n## ", 1)[0]
    text = re.sub(r"\\\n\s*", " ", block)
    return [shlex.split(line.strip()) for line in text.splitlines() if line.startswith("    ") and line.strip()]


def created_secrets(lines: list[list[str]]) -> dict[tuple[str, str], set[str]]:
    """(namespace, name) -> the keys of every Secret a `kubectl -n NS create secret generic NAME` line makes."""
    made: dict[tuple[str, str], set[str]] = {}
    for words in lines:
        if words[:2] == ["kubectl", "-n"] and words[3:6] == ["create", "secret", "generic"]:
            keys = {w.split("=", 2)[1] for w in words[7:] if w.startswith(("--from-literal=", "--from-file="))}
            made[(words[2], words[6])] = keys
    return made


def helm_install(lines: list[list[str]]) -> tuple[str, str, list[str]]:
    """The release, namespace and --set flags of the README's `helm upgrade --install` line."""
    (words,) = [w for w in lines if w[:3] == ["helm", "upgrade", "--install"]]
    assert words[4] == "helm/llm-cost-router", "the README installs the repository's chart"
    namespace = words[words.index("-n") + 1]
    sets = [arg for flag, value in itertools.pairwise(words) if flag == "--set" for arg in (flag, value)]
    return words[3], namespace, sets


def secrets_read(manifest: dict) -> Iterator[tuple[str, str | None]]:
    """(name, key) of every Secret a manifest reads, key None for a whole Secret mounted."""
    if isinstance(manifest, dict):
        if "secretKeyRef" in manifest:
            yield manifest["secretKeyRef"]["name"], manifest["secretKeyRef"]["key"]
        volume = manifest.get("secret")
        if isinstance(volume, dict) and "secretName" in volume:
            keys = [item["key"] for item in volume.get("items", [])]
            yield from ((volume["secretName"], key) for key in keys or [None])
        for value in manifest.values():
            yield from secrets_read(value)
    elif isinstance(manifest, list):
        for value in manifest:
            yield from secrets_read(value)


def unmade_secrets(lines: list[list[str]]) -> list[str]:
    """What the release the lines install reads of Secrets (its chart's own aside) that the lines do not make."""
    made = created_secrets(lines)
    release, namespace, sets = helm_install(lines)
    assert {ns for ns, _ in made} == {namespace}, "the Secrets are made in the release's namespace"
    docs = render(*sets, namespace=namespace, release=release)
    charts_own = {doc["metadata"]["name"] for doc in docs if doc["kind"] == "Secret"}
    read = {(name, key) for doc in docs for name, key in secrets_read(doc) if name not in charts_own}
    assert read, "the release reads Secrets made before it"
    return [
        f"Secret {name}" + (f", key {key}" if key else "")
        for name, key in sorted(read, key=str)
        if (namespace, name) not in made or (key is not None and key not in made[(namespace, name)])
    ]


def test_the_install_makes_the_secrets_its_release_reads() -> None:
    assert not unmade_secrets(install_lines())


def test_the_install_check_catches_a_secret_made_under_another_name() -> None:
    lines = install_lines()
    other_key = [[word.replace("api-keys=", "keys=") for word in words] for words in lines]
    assert unmade_secrets(other_key) == ["Secret llm-edge-keys, key api-keys"]
    # made under another name, while the helm line still names the one it read before
    other_name = [words if words[0] == "helm" else [w.replace("user-hash", "hash") for w in words] for words in lines]
    assert unmade_secrets(other_name) == ["Secret llm-end-user-hash, key secret"]
