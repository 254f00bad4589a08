"""The model-family registry (server/families/registry.py) is the one table: every family in it reaches every view
the gateway, ``alm serve`` / ``alm engine`` and ``alm make-tiny`` read, and nothing reaches a view without it."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from alm import families as alm_families
from alm import tiny
from alm.cli import _parser
from server.config import load_settings
from server.families.facts import DEFAULT_CHOICES, FAMILIES, ModelFacts, family_facts, parse_facts
from server.families.registry import BY_NAME, DEFAULT_FAMILY, FORMULAS, ModelFamily
from server.families.registry import FAMILIES as REGISTRY
from server.families.tokens import UNCOUNTED

NAMES = [family.name for family in REGISTRY]


def checkpoint(tmp_path: Path, family: ModelFamily, architecture: str) -> Path:
    """A directory whose config.json is what a published checkpoint of ``family`` says about itself."""
    tmp_path.mkdir(exist_ok=True)
    config: dict[str, object] = {"architectures": [architecture]}
    if family.config_key is not None:
        config[family.config_key] = {}
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


def test_names_are_unique_and_the_default_is_one() -> None:
    assert len(BY_NAME) == len(REGISTRY)
    assert DEFAULT_FAMILY in BY_NAME


def test_every_view_holds_exactly_the_registry() -> None:
    assert list(FAMILIES) == NAMES  # the gateway's facts
    assert list(DEFAULT_CHOICES) == [*NAMES, UNCOUNTED.name]  # ALM_AUDIO_TOKEN_MODEL
    assert list(tiny.FAMILIES) == NAMES  # alm make-tiny
    assert [_parser().parse_args(["make-tiny", "--family", name, "--out", "x"]).family for name in NAMES] == NAMES
    with pytest.raises(SystemExit):
        _parser().parse_args(["make-tiny", "--family", "qwen9", "--out", "x"])
    assert {f.formula.name for f in REGISTRY} | {UNCOUNTED.name} == set(FORMULAS)  # audio_tokens values


@pytest.mark.parametrize("name", NAMES)
def test_gateway_facts_are_the_entry(name: str) -> None:
    family = BY_NAME[name]
    facts = FAMILIES[name]
    assert facts == family_facts(name) == ModelFacts.of(family)
    assert parse_facts({"served": name}) == {"served": facts}  # what alm serve writes into ALM_MODEL_FACTS
    assert (facts.family, facts.max_clip_seconds, facts.audio_placeholder, facts.transcription_prompt) == (
        name, family.max_clip_seconds, family.audio_placeholder, family.transcription_prompt,
    )  # fmt: skip
    assert facts.count_audio is family.count_audio is FORMULAS[family.formula.name]
    assert facts.count_audio(30 * 16_000) > 0


@pytest.mark.parametrize("name", NAMES)
def test_alm_tells_each_architecture_apart(name: str, tmp_path: Path) -> None:
    family = BY_NAME[name]
    assert family.architectures
    for index, architecture in enumerate(family.architectures):
        found = alm_families.detect(checkpoint(tmp_path / str(index), family, architecture))
        assert found is family
        facts = alm_families.checkpoint_facts(tmp_path / str(index))
        assert facts is not None and facts["family"] == name
    if family.config_key is not None:  # the same architecture without the key is not this family
        (tmp_path / "config.json").write_text(json.dumps({"architectures": [family.architectures[0]]}))
        assert alm_families.detect(tmp_path) is None


@pytest.mark.parametrize("name", NAMES)
def test_tiny_maker_imports(name: str) -> None:
    module, _, function = BY_NAME[name].tiny_maker.partition(":")
    assert callable(getattr(importlib.import_module(module), function))


def test_the_default_family_is_everyones_default() -> None:
    assert load_settings().audio_token_model == DEFAULT_FAMILY
    assert _parser().parse_args(["make-tiny", "--out", "x"]).family == DEFAULT_FAMILY
    assert ModelFacts(family="x") == FAMILIES[DEFAULT_FAMILY].model_copy(update={"family": "x"})
