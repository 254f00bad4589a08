"""Structured-output specs are bounded at the gateway (server/guards/structured.py): every spelling vLLM 0.32 accepts is
checked or refused with a 400 naming the field, before any audio is decoded and before an engine sees the request."""

from __future__ import annotations

import random

import httpx
import pytest

from server.config import load_settings
from server.errors import InvalidRequest
from server.guards.structured import IGNORED_BY_ENGINE, TOO_COMPLEX, StructuredLimits, check_structured_output
from tests.support.audio_synth import chat_body
from tests.support.corpus.structured import over_limits, schema_format, worst_allowed

MODEL = "fake-model"
LIMITS = StructuredLimits.of(load_settings())
BAD_AUDIO = {"type": "input_audio", "input_audio": {"data": "bm90IGF1ZGlv", "format": "wav"}}  # "not audio"

REAL_WORLD = {  # schemas and specs as clients send them (OpenAI's structured-output guide, typical extraction)
    "math steps": schema_format(
        {
            "type": "object",
            "properties": {
                "steps": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"explanation": {"type": "string"}, "output": {"type": "string"}},
                        "required": ["explanation", "output"],
                        "additionalProperties": False,
                    },
                },
                "final_answer": {"type": "string"},
            },
            "required": ["steps", "final_answer"],
            "additionalProperties": False,
        }
    ),
    "recursive ui": schema_format(
        {
            "type": "object",
            "properties": {
                "type": {"type": "string", "enum": ["div", "button", "header", "section", "field", "form"]},
                "label": {"type": "string"},
                "children": {"type": "array", "items": {"$ref": "#"}},
                "attributes": {"type": "array", "items": {"$ref": "#/$defs/attribute"}},
            },
            "required": ["type", "label", "children", "attributes"],
            "$defs": {
                "attribute": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}, "value": {"type": "string"}},
                    "required": ["name", "value"],
                }
            },
        }
    ),
    "transcript": schema_format(
        {
            "type": "object",
            "properties": {
                "language": {"type": "string", "pattern": "^[a-z]{2}(-[A-Z]{2})?$"},
                "speakers": {"type": "integer", "minimum": 1, "maximum": 20},
                "segments": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "start": {"type": "string", "pattern": r"^\d{2}:\d{2}:\d{2}$"},
                            "text": {"type": "string"},
                            "mood": {"anyOf": [{"enum": ["calm", "angry", "happy"]}, {"type": "null"}]},
                        },
                    },
                },
            },
        }
    ),
    "json object": {"response_format": {"type": "json_object"}},
    "text": {"response_format": {"type": "text"}},
    "regex": {"structured_outputs": {"regex": r"\(\d{3}\) \d{3}-\d{4}", "whitespace_pattern": r"[ \t]?"}},
    "choice": {"structured_outputs": {"choice": ["positive", "negative", "neutral"]}},
    "grammar": {"structured_outputs": {"grammar": 'root ::= "yes" | "no"'}},
    "json as text": {"structured_outputs": {"json": '{"type": "object", "properties": {"n": {"type": "integer"}}}'}},
    "flags": {"structured_outputs": {"json_object": True, "disable_any_whitespace": True}},
    "tools required": {
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "parameters": {
                        "type": "object",
                        "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
                        "required": ["city"],
                    },
                },
            }
        ],
        "tool_choice": "required",
    },
}


@pytest.fixture
def gateway(start_fake, start_gateway):
    engine, url = start_fake(model=MODEL)
    return engine, start_gateway([url])


def post(url: str, body: dict) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)


def assert_refused(reply: httpx.Response, param: str | None, code: str) -> dict:
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error
    return error


@pytest.mark.parametrize(
    ("fragment", "param"), [(f, p) for _, f, p in over_limits(LIMITS)], ids=[n for n, *_ in over_limits(LIMITS)]
)
def test_specs_past_a_limit_are_refused_before_the_audio_is_decoded(gateway, fragment, param) -> None:
    engine, url = gateway
    error = assert_refused(post(url, chat_body(MODEL, BAD_AUDIO, **fragment)), param, TOO_COMPLEX)
    assert "structured output too complex: more than" in error["message"]
    assert error["param"].startswith(("response_format.json_schema.schema", "structured_outputs.", "tools[0]"))
    assert engine.bodies == []


@pytest.mark.parametrize("name", [*worst_allowed(LIMITS), *REAL_WORLD])
def test_specs_within_the_limits_reach_the_engine_unchanged(gateway, name) -> None:
    engine, url = gateway
    fragment = worst_allowed(LIMITS).get(name) or REAL_WORLD[name]
    reply = post(url, chat_body(MODEL, **fragment))
    assert reply.status_code == 200, reply.text
    [sent] = engine.bodies
    assert {key: sent[key] for key in fragment} == fragment


UNSUPPORTED = "unsupported_parameter"


@pytest.mark.parametrize(
    ("fragment", "param", "code"),
    [
        *[({name: "x"}, name, UNSUPPORTED) for name in IGNORED_BY_ENGINE],  # vLLM 0.32 ignores them: unconstrained
        ({"response_format": {"type": "structural_tag", "format": {}}}, "response_format.type", UNSUPPORTED),
        ({"response_format": {"type": "xml"}}, "response_format.type", "invalid_value"),
        ({"response_format": "json"}, "response_format", "invalid_value"),
        ({"structured_outputs": {"structural_tag": "{}"}}, "structured_outputs.structural_tag", UNSUPPORTED),
        ({"structured_outputs": {"_backend": "outlines"}}, "structured_outputs._backend", UNSUPPORTED),
        ({"structured_outputs": ["regex"]}, "structured_outputs", "invalid_type"),
        ({"structured_outputs": {"json": "{not json"}}, "structured_outputs.json", "invalid_value"),
        (
            schema_format({"$ref": "https://example.com/s.json"}),
            'response_format.json_schema.schema["$ref"]',
            UNSUPPORTED,
        ),
    ],
)
def test_spellings_the_gateway_cannot_bound_are_refused(gateway, fragment, param, code) -> None:
    engine, url = gateway
    error = assert_refused(post(url, chat_body(MODEL, BAD_AUDIO, **fragment)), param, code)
    assert len(error["message"]) < 300  # never echoes the client's spec
    assert engine.bodies == []


def test_one_budget_per_request_set_by_the_settings(start_fake, start_gateway) -> None:
    _, url = start_fake(model=MODEL)
    gateway = start_gateway([url], max_schema_alternatives=4, max_schema_repeat=10)
    four = schema_format({"anyOf": [{"anyOf": [{"type": "string"}, {"type": "integer"}]}, {"type": "null"}]})
    assert post(gateway, chat_body(MODEL, **four, structured_outputs={"regex": "a{4}"})).status_code == 200
    reply = post(gateway, chat_body(MODEL, **four, structured_outputs={"regex": "a|b"}))  # a fifth alternative
    assert_refused(reply, "structured_outputs.regex", TOO_COMPLEX)
    # xgrammar compiles one rule per distinct string length bound, so repeats of one bound count once
    same = {"type": "object", "properties": {f"p{i}": {"type": "string", "maxLength": 6} for i in range(5)}}
    assert post(gateway, chat_body(MODEL, **schema_format(same))).status_code == 200
    other = {**same, "properties": {**same["properties"], "q": {"type": "string", "maxLength": 5}}}
    reply = post(gateway, chat_body(MODEL, **schema_format(other)))
    assert_refused(reply, "response_format.json_schema.schema.properties.q.maxLength", TOO_COMPLEX)


def random_tree(rng: random.Random, depth: int) -> object:
    """A JSON value shaped like a schema, with the keywords the checker reads given values of any type."""
    if depth == 0 or rng.random() < 0.3:
        return rng.choice([None, True, 7, -1, 10**12, 1.5, "", "x", "#/a", "http://h/s", "(a{9}){9}", "[^]]{3}|\\"])
    if rng.random() < 0.3:
        return [random_tree(rng, depth - 1) for _ in range(rng.randint(0, 4))]
    keys = ["type", "anyOf", "oneOf", "allOf", "$ref", "pattern", "patternProperties", "minLength", "maxLength", "p"]
    return {rng.choice(keys): random_tree(rng, depth - 1) for _ in range(rng.randint(0, 5))}


def random_regex(rng: random.Random) -> str:
    return "".join(
        rng.choice(["a", "|", "(", ")", "[", "]", "^", "\\", "{", "}", ",", "3", "99", "*", "."]) for _ in range(30)
    )


def test_fuzzed_specs_are_checked_or_refused_never_crash() -> None:
    """Seeded: whatever the spec, the checker passes it or raises the gateway's 400, within the budget's time."""
    rng, settings = random.Random(17), load_settings()
    for _ in range(3000):
        body = {
            "response_format": {"type": "json_schema", "json_schema": {"schema": random_tree(rng, 6)}},
            "structured_outputs": {
                "regex": random_regex(rng),
                "choice": [random_regex(rng)],
                "json": random_tree(rng, 4),
            },
            "tools": [{"function": {"parameters": random_tree(rng, 5)}}],
            "tool_choice": rng.choice(["required", {"function": {"name": "f"}}, "auto"]),
        }
        try:
            check_structured_output(body, settings)
        except InvalidRequest as exc:
            assert exc.code in (TOO_COMPLEX, "unsupported_parameter", "invalid_value"), exc.code
