"""Stream failover after the first byte (issue 12, bench part c). Not CI.

``kill``: two tiny engines behind the gateway, ``--streams`` concurrent greedy streams; once every stream has
received tokens, one engine is killed (SIGKILL, whole process tree). Client-visible stream failures (an error
event, an exception or a short stream) are counted with failover off (``ALM_STREAM_FAILOVER=false``), then on;
the killed engine is restarted between the runs.

``join``: how often a resumed greedy generation equals an uninterrupted one. For each of ``--requests``
greedy requests (distinct clips) run uninterrupted on one engine, and each cut point k (tokens relayed before
the engine "died"), the request the gateway would resume with (server/relay/resume.py ``resume_body``: the text of the
first k content deltas continued as the final assistant message, ``max_tokens`` less k) goes to the same
engine; the joined text and tokens are compared with the uninterrupted run's, and the resumed prompt's tokens
with the original prompt + the first k generated tokens (does re-tokenising the text give the same tokens?).

    .venv/bin/python -m bench.routing.failover kill --streams 8
    .venv/bin/python -m bench.routing.failover join --requests 20
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import httpx
import openai

from bench.routing.common import clip_part, gateway
from model_plugins.midashenglm.tiny import make_tiny_checkpoint
from server.relay.resume import resume_body
from tests.support.engine import EngineProcess, kill_tree, start_engine

MODEL = "tiny-midashenglm"


def _engine(checkpoint: Path, work: Path, i: int) -> EngineProcess:
    cores = sorted(os.sched_getaffinity(0))
    return start_engine(checkpoint, work / f"engine-{i}-{time.monotonic_ns()}.log", cpu_bind=str(cores[i % len(cores)]))


def _stream(gw: str, i: int, tokens: int, started: threading.Barrier, outcome: list) -> None:
    sdk = openai.OpenAI(base_url=gw + "/v1", api_key="x", max_retries=0, timeout=600)
    messages = [{"role": "user", "content": [clip_part(2.0, i), {"type": "text", "text": "Describe it."}]}]
    got, waited = 0, False
    try:
        stream = sdk.chat.completions.create(
            model=MODEL, messages=messages, stream=True, max_tokens=tokens, temperature=0,
            extra_body={"ignore_eos": True}, stream_options={"include_usage": True, "continuous_usage_stats": True},
        )  # fmt: skip
        finish = None
        for chunk in stream:
            if chunk.choices:
                got += 1
                finish = chunk.choices[0].finish_reason or finish
            if got >= 4 and not waited:
                waited = True
                started.wait()
        ok = finish == "length" and chunk.usage is not None and chunk.usage.completion_tokens == tokens
        outcome[i] = "ok" if ok else f"short ({finish}, {chunk.usage})"
    except Exception as exc:  # every failure the client sees is counted
        outcome[i] = f"error: {exc}"
    finally:
        if not waited:
            started.abort()


def kill_run(engines: list[EngineProcess], failover: bool, streams: int, tokens: int) -> list[str]:
    with gateway(engines, "least-request", stream_failover=failover) as gw:
        outcome: list = [None] * streams
        started = threading.Barrier(streams + 1)
        threads = [threading.Thread(target=_stream, args=(gw, i, tokens, started, outcome)) for i in range(streams)]
        for t in threads:
            t.start()
        started.wait()  # every stream has its first tokens: half of them on the engine killed now
        kill_tree(engines[1].proc)
        for t in threads:
            t.join()
    return outcome


def kill(args: argparse.Namespace, work: Path, checkpoint: Path) -> None:
    engines = [_engine(checkpoint, work, 0), _engine(checkpoint, work, 1)]
    try:
        for failover in (False, True):
            if engines[1].proc.poll() is not None:
                engines[1] = _engine(checkpoint, work, 1)
            outcome = kill_run(engines, failover, args.streams, args.tokens)
            failed = [o for o in outcome if o != "ok"]
            print(f"failover {'on ' if failover else 'off'}: {len(failed)} of {args.streams} streams failed for the "
                  f"client {sorted(set(o[:60] for o in failed))}", flush=True)  # fmt: skip
    finally:
        for engine in engines:
            kill_tree(engine.proc)


def _chat(client: httpx.Client, url: str, body: dict) -> dict:
    resp = client.post(url + "/v1/chat/completions", json=body)
    resp.raise_for_status()
    return resp.json()


def join(args: argparse.Namespace, work: Path, checkpoint: Path) -> None:
    engine = _engine(checkpoint, work, 0)
    cuts = [int(k) for k in args.cuts.split(",")]
    text_equal = tokens_equal = clean = total = replaced = clean_equal = plain = plain_equal = 0
    try:
        with httpx.Client(timeout=600) as client:
            for i in range(args.requests):
                messages = [{"role": "user", "content": [clip_part(2.0, 1000 + i), {"type": "text", "text": "Say."}]}]
                body = {"model": MODEL, "messages": messages, "max_tokens": args.tokens, "temperature": 0,
                        "ignore_eos": True, "return_token_ids": True}  # fmt: skip
                deltas = []
                with client.stream("POST", engine.url + "/v1/chat/completions", json={**body, "stream": True}) as r:
                    for line in r.iter_lines():
                        if line.startswith("data: {"):
                            choice = json.loads(line[6:])["choices"]
                            if choice and "token_ids" in choice[0] and choice[0]["token_ids"]:
                                deltas.append((choice[0]["delta"].get("content") or "", choice[0]["token_ids"]))
                full = _chat(client, engine.url, body)
                prompt, generated = full["prompt_token_ids"], full["choices"][0]["token_ids"]
                text = full["choices"][0]["message"]["content"]
                for k in cuts:
                    if k >= len(deltas):
                        continue
                    sent = "".join(d for d, _ in deltas[:k])
                    sent_ids = [t for _, ids in deltas[:k] for t in ids]
                    resumed = json.loads(resume_body(json.dumps(body).encode(), sent, len(sent_ids)))
                    out = _chat(client, engine.url, resumed)
                    total += 1
                    same_text = sent + out["choices"][0]["message"]["content"] == text
                    same_tokens = sent_ids + out["choices"][0]["token_ids"] == generated
                    same_prompt = out["prompt_token_ids"] == prompt + sent_ids
                    text_equal, tokens_equal, clean = (
                        text_equal + same_text,
                        tokens_equal + same_tokens,
                        clean + same_prompt,
                    )
                    clean_equal += same_prompt and same_tokens
                    cut_char = "\ufffd" in sent  # a token ended inside a UTF-8 character: text cannot carry it
                    replaced += cut_char
                    plain, plain_equal = plain + (not cut_char), plain_equal + (not cut_char and same_text)
        print(f"greedy joins: text equal {text_equal}/{total}, tokens equal {tokens_equal}/{total}, resumed prompt "
              f"= prompt + generated tokens {clean}/{total} ({args.requests} requests x cuts {cuts}, "
              f"{args.tokens} tokens)\n  text sent held U+FFFD (a token cut inside a character) in {replaced}/{total}; "
              f"text equal where it did not: {plain_equal}/{plain}; tokens equal where the resumed prompt re-tokenised "
              f"to the generated tokens: {clean_equal}/{clean}", flush=True)  # fmt: skip
    finally:
        kill_tree(engine.proc)


def _fix_generation_prompt(checkpoint: Path) -> None:
    """The tiny checkpoint's template strips the newline of its generation prompt (``assistant\\n{%- endif``),
    so an assistant message renders differently from it and no resumed prompt could match; the published
    ChatML templates (and alm/tiny's, model_plugins/qwen_audio's) keep it. Use the published form here."""
    for path in checkpoint.glob("*"):
        if path.name in ("tokenizer_config.json", "chat_template.jinja"):
            text = path.read_text()
            fixed = text.replace("assistant\\n{%- endif", "assistant\\n{% endif").replace(
                "assistant\n{%- endif", "assistant\n{% endif"
            )
            path.write_text(fixed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["kill", "join"])
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--cuts", default="1,2,5,10,30,80")
    parser.add_argument("--preset", default="tiny")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-failover-"))
    checkpoint = work / f"{args.preset}-midashenglm"
    make_tiny_checkpoint(checkpoint, preset=args.preset)
    _fix_generation_prompt(checkpoint)
    (kill if args.mode == "kill" else join)(args, work, checkpoint)


if __name__ == "__main__":
    main()
