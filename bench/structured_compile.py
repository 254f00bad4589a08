"""Compile time of the worst structured-output specs the gateway allows (server/guards/structured.py) vs trivial ones,
with xgrammar as vLLM 0.32's default backend calls it, on a synthetic 151k-token vocabulary (Qwen2's size: compile cost
grows with the vocabulary, and no real tokenizer is downloadable here).

    .venv/bin/python -m bench.structured_compile [--threads N]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from typing import Any

import xgrammar as xgr
from vllm.v1.structured_output.backend_xgrammar import choice_as_grammar

from server.config import load_settings
from server.guards.structured import StructuredLimits
from tests.support.corpus.structured import schema_format, worst_allowed

VOCAB_SIZE = 151_000
TRIVIAL: dict[str, dict[str, Any]] = {
    "trivial schema": schema_format({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}),
    "json_object": {"structured_outputs": {"json_object": True}},
    "trivial regex": {"structured_outputs": {"regex": "[a-z]+"}},
    "two choices": {"structured_outputs": {"choice": ["yes", "no"]}},
}


def compiler(threads: int) -> xgr.GrammarCompiler:
    rng, alphabet = random.Random(0), "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _-.,:;\"'{}[]()\n"
    vocab = {bytes([b]) for b in range(256)}
    while len(vocab) < VOCAB_SIZE:
        vocab.add("".join(rng.choice(alphabet) for _ in range(rng.randint(2, 8))).encode())
    info = xgr.TokenizerInfo(sorted(vocab), vocab_type=xgr.VocabType.RAW, stop_token_ids=[0])
    return xgr.GrammarCompiler(info, max_threads=threads, cache_enabled=False)


def compile_fragment(c: xgr.GrammarCompiler, fragment: dict[str, Any]) -> None:
    """What backend_xgrammar.compile_grammar does for the spec the fragment carries."""
    if "response_format" in fragment:
        c.compile_json_schema(json.dumps(fragment["response_format"]["json_schema"]["schema"]), any_whitespace=True)
        return
    spec = fragment["structured_outputs"]
    if "json_object" in spec:
        c.compile_json_schema('{"type": "object"}', any_whitespace=True)
    elif "regex" in spec:
        c.compile_regex(spec["regex"])
    elif "choice" in spec:
        c.compile_grammar(choice_as_grammar(spec["choice"]))
    else:
        c.compile_grammar(spec["grammar"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="xgrammar compile threads (vLLM uses up to 8)")
    args = parser.parse_args()
    c = compiler(args.threads)
    cases = {
        **TRIVIAL,
        **{f"worst allowed: {k}": v for k, v in worst_allowed(StructuredLimits.of(load_settings())).items()},
    }
    print(f"{'spec':40s} {'bytes':>7s} {'compile s':>10s}")
    for name, fragment in cases.items():
        start = time.perf_counter()
        compile_fragment(c, fragment)
        print(f"{name:40s} {len(json.dumps(fragment)):7d} {time.perf_counter() - start:10.3f}", flush=True)


if __name__ == "__main__":
    main()
