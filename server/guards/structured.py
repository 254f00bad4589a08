"""Structured-output requests bounded before an engine compiles them.

vLLM compiles every ``response_format`` / ``structured_outputs`` spec (and, with ``tool_choice`` "required" or a
named function, the tools' parameter schemas) into a grammar with xgrammar, with no time limit except for plain
regexes. A 2 MB nested ``anyOf`` took minutes and hundreds of MB; a ``"maxLength": 100`` alone costs seconds with a
150k-token vocabulary, because a counted repetition of a broad character class is expanded state by state. So each
request's specs share one budget: bytes, JSON nesting, values, alternatives (``anyOf``/``oneOf``/``allOf`` branches and
regex ``|``) and repetition counts (regex ``{m,n}``, string ``minLength``/``maxLength``). Spellings the gateway cannot
bound (structural tags) or that vLLM 0.32 silently ignores (``guided_*``) are refused. Runs on the parsed JSON before
any audio is decoded; every refusal is a 400 naming the field.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from server.config import Settings
from server.errors import InvalidRequest
from server.guards.json_tree import render_path

TOO_COMPLEX = "structured_output_too_complex"
UNSUPPORTED = "unsupported_parameter"

# Removed from vLLM (0.32 ignores them with a warning: the output would silently not be constrained).
IGNORED_BY_ENGINE = (
    "guided_json",
    "guided_regex",
    "guided_choice",
    "guided_grammar",
    "guided_decoding_backend",
    "guided_whitespace_pattern",
    "structural_tag",
)
# StructuredOutputsParams' public fields (vllm/sampling_params.py) → what each holds.
_SO_SCHEMA, _SO_REGEX, _SO_GRAMMAR, _SO_CHOICE, _SO_FLAG = "schema", "regex", "grammar", "choice", "flag"
SO_FIELDS = {
    "json": _SO_SCHEMA,
    "regex": _SO_REGEX,
    "whitespace_pattern": _SO_REGEX,
    "grammar": _SO_GRAMMAR,
    "choice": _SO_CHOICE,
    "json_object": _SO_FLAG,
    "disable_any_whitespace": _SO_FLAG,
    "disable_additional_properties": _SO_FLAG,
}
RESPONSE_FORMAT_TYPES = ("text", "json_object", "json_schema")
_BRANCH_KEYS = ("anyOf", "oneOf", "allOf")
_COUNTED = re.compile(r"\{(\d{1,9})(,(\d{0,9}))?\}")


@dataclass(frozen=True)
class StructuredLimits:
    schema_bytes: int
    schema_depth: int
    schema_nodes: int
    alternatives: int
    repeat: int
    regex_chars: int
    grammar_bytes: int
    choices: int

    @classmethod
    def of(cls, settings: Settings) -> StructuredLimits:
        return cls(
            settings.max_schema_bytes,
            settings.max_schema_depth,
            settings.max_schema_nodes,
            settings.max_schema_alternatives,
            settings.max_schema_repeat,
            settings.max_regex_chars,
            settings.max_grammar_bytes,
            settings.max_choices,
        )


@dataclass
class _Budget:
    """What the request's specs have used so far, all of them together (an engine compiles them as one)."""

    limits: StructuredLimits
    bytes: int = 0
    nodes: int = 0
    alternatives: int = 0
    repeat: int = 0
    length_bounds: set[tuple[int, int]] = field(default_factory=set)

    def add(self, what: str, amount: int, limit: int, param: str | None, unit: str) -> None:
        total = getattr(self, what) + amount
        setattr(self, what, total)
        if total > limit:
            raise InvalidRequest(
                f"structured output too complex: more than {limit} {unit} in this request's "
                "response_format / structured_outputs / tool schemas",
                param=param,
                code=TOO_COMPLEX,
            )


def check_structured_output(body: dict[str, Any], settings: Settings) -> None:
    """Refuse (400) any structured-output spec of ``body`` past the gateway's limits or that it cannot bound."""
    for name in IGNORED_BY_ENGINE:
        if name in body:
            raise InvalidRequest(
                f"'{name}' is not applied by the engine (vLLM removed it), so the output would not be constrained: "
                "use response_format or structured_outputs",
                param=name,
                code=UNSUPPORTED,
            )
    budget = _Budget(StructuredLimits.of(settings))
    fmt = body.get("response_format")
    if fmt is not None:
        _response_format(fmt, budget)
    outputs = body.get("structured_outputs")
    if outputs is not None:
        _structured_outputs(outputs, budget)
    choice, tools = body.get("tool_choice"), body.get("tools")
    if (choice == "required" or isinstance(choice, dict)) and isinstance(tools, list):
        for i, tool in enumerate(tools):  # vLLM compiles these into one anyOf schema
            function = tool.get("function") if isinstance(tool, dict) else None
            if isinstance(function, dict) and "parameters" in function:
                _schema(function["parameters"], ("tools", i, "function", "parameters"), budget)


def _response_format(fmt: object, budget: _Budget) -> None:
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "structural_tag":
        raise InvalidRequest(
            "response_format type 'structural_tag' is not accepted by this gateway; use 'json_schema'",
            param="response_format.type",
            code=UNSUPPORTED,
        )
    if not isinstance(fmt, dict) or kind not in RESPONSE_FORMAT_TYPES:
        raise InvalidRequest(
            f"response_format must be an object whose type is one of {', '.join(RESPONSE_FORMAT_TYPES)}",
            param="response_format.type" if isinstance(fmt, dict) else "response_format",
            code="invalid_value",
        )
    spec = fmt.get("json_schema")
    if kind == "json_schema" and isinstance(spec, dict) and "schema" in spec:
        _schema(spec["schema"], ("response_format", "json_schema", "schema"), budget)


def _structured_outputs(outputs: object, budget: _Budget) -> None:
    if not isinstance(outputs, dict):
        raise InvalidRequest("structured_outputs must be an object", param="structured_outputs", code="invalid_type")
    for key, value in outputs.items():
        path = ("structured_outputs", key)
        kind = SO_FIELDS.get(key)
        if kind is None:
            what = "structural tags are" if key == "structural_tag" else f"'{key}' is"
            raise InvalidRequest(
                f"structured_outputs: {what} not accepted by this gateway; use one of {', '.join(SO_FIELDS)}",
                param=render_path(path),
                code=UNSUPPORTED,
            )
        if value is None or kind == _SO_FLAG:
            continue
        if kind == _SO_SCHEMA:
            _schema(_json_text(value, path, budget) if isinstance(value, str) else value, path, budget)
        elif kind == _SO_REGEX and isinstance(value, str):
            _regex(value, path, budget)
        elif kind == _SO_GRAMMAR and isinstance(value, str):
            _size(len(value.encode()), budget.limits.grammar_bytes, path, "bytes of grammar")
        elif kind == _SO_CHOICE and isinstance(value, list):
            _size(len(value), budget.limits.choices, path, "choices")
            total = sum(len(c.encode()) for c in value if isinstance(c, str))  # vLLM makes them a grammar
            _size(total, budget.limits.grammar_bytes, path, "bytes of choices")


def _json_text(text: str, path: tuple[str | int, ...], budget: _Budget) -> object:
    _size(len(text.encode()), budget.limits.schema_bytes, path, "bytes of schema")
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise InvalidRequest(
            "structured_outputs.json must be a JSON schema (an object, or a string holding one)",
            param=render_path(path),
            code="invalid_value",
        ) from None


def _size(size: int, limit: int, path: tuple[str | int, ...], unit: str) -> None:
    if size > limit:
        raise InvalidRequest(
            f"structured output too complex: more than {limit} {unit}", param=render_path(path), code=TOO_COMPLEX
        )


def _schema(schema: object, root: tuple[str | int, ...], budget: _Budget) -> None:
    """Walk a JSON schema (iteratively: its nesting is the client's), counting against the request's budget."""
    limits, where = budget.limits, render_path(root)
    stack: list[tuple[object, tuple[str | int, ...], int]] = [(schema, root, 1)]
    while stack:
        node, path, depth = stack.pop()
        budget.add("nodes", 1, limits.schema_nodes, where, "values")
        if isinstance(node, dict):
            _keywords(node, path, budget)
            children: list[tuple[str | int, object]] = list(node.items())
        elif isinstance(node, list):
            children = list(enumerate(node))
        else:
            continue
        if children and depth >= limits.schema_depth:
            _size(depth + 1, limits.schema_depth, path, "levels of nested objects and arrays")
        stack.extend((child, (*path, key), depth + 1) for key, child in reversed(children))  # document order
    size = len(json.dumps(schema, ensure_ascii=False, separators=(",", ":")).encode())
    budget.add("bytes", size, limits.schema_bytes, where, "bytes of schema")


def _keywords(node: dict[str, Any], path: tuple[str | int, ...], budget: _Budget) -> None:
    limits = budget.limits
    for key in _BRANCH_KEYS:
        branches = node.get(key)
        if isinstance(branches, list):
            budget.add("alternatives", len(branches), limits.alternatives, render_path((*path, key)), "alternatives")
    ref = node.get("$ref")
    if isinstance(ref, str) and not ref.startswith("#"):
        raise InvalidRequest(
            "only local $ref ('#/...') is accepted in a structured-output schema",
            param=render_path((*path, "$ref")),
            code=UNSUPPORTED,
        )
    pattern = node.get("pattern")
    if isinstance(pattern, str):
        _regex(pattern, (*path, "pattern"), budget)
    patterns = node.get("patternProperties")
    if isinstance(patterns, dict):
        for name in patterns:
            _regex(name, (*path, "patternProperties"), budget)
    low, high = (_count(node.get(key)) for key in ("minLength", "maxLength"))
    if (low or high) and (low, high) not in budget.length_bounds:  # xgrammar shares one rule per distinct bound
        budget.length_bounds.add((low, high))
        budget.add("repeat", max(low, high), limits.repeat, render_path((*path, "maxLength")), "repetitions")


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _regex(pattern: str, path: tuple[str | int, ...], budget: _Budget) -> None:
    """Bound a regex without compiling it: length, ``|`` count, group nesting and counted repetitions (a counted
    group's inner repetitions are multiplied by its count: that is how the automaton grows)."""
    limits, param = budget.limits, render_path(path)
    _size(len(pattern), limits.regex_chars, path, "characters of regex")
    frames = [0]  # repetition cost of each open group
    last_group = 0  # cost of the group just closed, when a quantifier may follow it
    i = 0
    while i < len(pattern):
        char, after_group = pattern[i], last_group
        last_group = -1
        if char == "\\":
            i += 2
            continue
        if char == "[":
            i = _class_end(pattern, i)
            continue
        if char == "(":
            frames.append(0)
            _size(len(frames) - 1, limits.schema_depth, path, "levels of nested regex groups")
        elif char == ")" and len(frames) > 1:
            last_group = frames.pop()
        elif char == "|":
            budget.add("alternatives", 1, limits.alternatives, param, "alternatives")
        elif char == "{" and (counted := _COUNTED.match(pattern, i)):
            count = max(int(counted.group(1)), int(counted.group(3) or 0))
            frames[-1] += count * max(1, after_group)
            i = counted.end()
            continue
        i += 1
    budget.add("repeat", sum(frames), limits.repeat, param, "repetitions")


def _class_end(pattern: str, start: int) -> int:
    """Index after the character class opening at ``start`` (a leading ``]`` or ``^]`` is a literal)."""
    i = start + 1
    if i < len(pattern) and pattern[i] == "^":
        i += 1
    if i < len(pattern) and pattern[i] == "]":
        i += 1
    while i < len(pattern) and pattern[i] != "]":
        i += 2 if pattern[i] == "\\" else 1
    return i + 1
