"""The deploy instructions (docs/deploy.md and README's Deploy section) name only files that exist, so the
commands people copy are the files the other checks in tests/deploy validate."""

from __future__ import annotations

import re

import pytest

from tests.deploy.deploy_checks import REPO

DOCS = [p for p in (REPO / "docs" / "deploy.md", REPO / "README.md") if p.exists()]
PATH = re.compile(r"(?<![\w/.-])((?:deploy|scripts|tests/deploy)/[\w./-]*[\w]|docker-compose\.yml|Dockerfile)")


def test_deploy_doc_exists():
    assert REPO / "docs" / "deploy.md" in DOCS


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_paths_named_in_docs_exist(doc):
    named = set(PATH.findall(doc.read_text()))
    missing = sorted(p for p in named if not (REPO / p).exists())
    assert not missing, f"{doc.name} names files that do not exist: {missing}"


def test_documented_compose_and_kubectl_commands_use_shipped_files():
    text = (REPO / "docs" / "deploy.md").read_text()
    assert "docker compose up -d --wait --scale engine=2" in text
    for target in re.findall(r"kubectl apply -[kf] (\S+)", text):
        assert (REPO / target).exists(), target
