"""Structured-output specs at the gateway's limits and just past them (server/guards/structured.py), as request-body
fragments. The worst allowed ones are what an engine may be asked to compile; bench/structured_compile.py times them
with xgrammar and tests/server/guards/test_structured_output_engine.py sends them to a real engine."""

from __future__ import annotations

from typing import Any

from server.guards.structured import StructuredLimits


def schema_format(schema: object) -> dict[str, Any]:
    return {"response_format": {"type": "json_schema", "json_schema": {"name": "out", "schema": schema}}}


def many_properties(nodes: int) -> dict[str, Any]:
    """An object schema of exactly ``nodes`` JSON values: 3 per property (its schema, "type", the type)."""
    count = (nodes - 4) // 3  # the root, its type, "properties", "required"; per property its schema, type, name
    props = {f"p{i}": {"type": "string"} for i in range(count)}
    return {"type": "object", "properties": props, "required": list(props)}


def nested_any_of(alternatives: int, depth: int) -> dict[str, Any]:
    """``alternatives`` anyOf branches in a chain ``depth`` deep (each level nests 2 JSON containers)."""
    levels = min(depth, alternatives // 2)
    width = alternatives // levels
    node: dict[str, Any] = {"type": "string"}
    for level in range(levels):
        extra = alternatives - width * levels if level == levels - 1 else 0
        node = {"anyOf": [node] + [{"type": "integer", "minimum": i} for i in range(width - 1 + extra)]}
    return node


def alternation(count: int) -> str:
    """A regex of ``count`` alternatives (``count - 1`` bars)."""
    return "|".join(f"w{i}" for i in range(count))


def worst_allowed(limits: StructuredLimits) -> dict[str, dict[str, Any]]:
    """One request-body fragment per limit, each at it (the budget is shared, so each uses it alone)."""
    return {
        "nodes": schema_format(many_properties(limits.schema_nodes)),
        "alternatives": schema_format(nested_any_of(limits.alternatives, limits.schema_depth // 2 - 1)),
        "string length": schema_format({"type": "string", "maxLength": limits.repeat}),
        "regex repeat": {"structured_outputs": {"regex": f".{{0,{limits.repeat}}}"}},
        "regex alternatives": {"structured_outputs": {"regex": alternation(limits.alternatives + 1)}},
        "choices": {"structured_outputs": {"choice": [f"c{i}" for i in range(limits.choices)]}},
        "grammar": {"structured_outputs": {"grammar": grammar(limits.grammar_bytes)}},
    }


def grammar(size: int) -> str:
    """A GBNF grammar of ``size`` bytes: a root with many literal alternatives."""
    head, words, i = 'root ::= "a"', [], 0
    while len(head) + sum(len(w) for w in words) + len(f' | "w{i}"') <= size:
        words.append(f' | "w{i}"')
        i += 1
    text = head + "".join(words)
    return text + " " * (size - len(text))


def over_limits(limits: StructuredLimits) -> list[tuple[str, dict[str, Any], str]]:
    """(name, body fragment, the ``param`` the 400 names), each just past one limit."""
    schema = "response_format.json_schema.schema"
    deep: object = {"type": "string"}
    for _ in range(limits.schema_depth):
        deep = {"type": "array", "items": deep}
    root = int(limits.repeat**0.5) + 1  # (a{root}){root} repeats root² > limit times
    pad = {"type": "string", "description": "x" * limits.schema_bytes}
    return [
        ("depth", schema_format(deep), schema + ".items" * (limits.schema_depth - 1)),
        ("nodes", schema_format(many_properties(limits.schema_nodes + 8)), schema),
        ("bytes", schema_format(pad), schema),
        ("alternatives", schema_format(nested_any_of(limits.alternatives + 1, 4)), None),
        ("string length", schema_format({"type": "string", "maxLength": limits.repeat + 1}), schema + ".maxLength"),
        ("regex chars", {"structured_outputs": {"regex": "a" * (limits.regex_chars + 1)}}, "structured_outputs.regex"),
        (
            "regex bars",
            {"structured_outputs": {"regex": alternation(limits.alternatives + 2)}},
            "structured_outputs.regex",
        ),
        ("regex repeat", {"structured_outputs": {"regex": f"a{{{limits.repeat + 1}}}"}}, "structured_outputs.regex"),
        ("nested repeat", {"structured_outputs": {"regex": f"(a{{{root}}}){{{root}}}"}}, "structured_outputs.regex"),
        ("choices", {"structured_outputs": {"choice": ["c"] * (limits.choices + 1)}}, "structured_outputs.choice"),
        (
            "grammar",
            {"structured_outputs": {"grammar": "x" * (limits.grammar_bytes + 1)}},
            "structured_outputs.grammar",
        ),
        (
            "pattern",
            schema_format({"type": "string", "pattern": f"^[a-z]{{{limits.repeat + 1}}}$"}),
            schema + ".pattern",
        ),
        (
            "tool schema",
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {"name": "f", "parameters": many_properties(limits.schema_nodes + 8)},
                    }
                ],
                "tool_choice": "required",
            },
            "tools[0].function.parameters",
        ),
        (
            "json string",
            {"structured_outputs": {"json": '{"type": "string", "maxLength": 100000}'}},
            "structured_outputs.json.maxLength",
        ),
    ]
