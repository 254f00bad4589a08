"""The ``alm`` command.

    alm serve   [--model DIR ...] [--engines N] [--host H] [--port P] [--served-model-name NAME]
    alm engine  [--model DIR] [--served-model-name NAME] [--host H] [--port P] [extra vLLM flags...]
    alm gateway [--host H] [--port P]
    alm make-tiny --out DIR [--family F] [--preset tiny|bench] [--seed S]

Flags override the ``ALM_*`` environment (``alm.engine.EngineSettings``, ``alm.gateway.GatewayAddress``,
``server.config.Settings``).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from server.families.registry import BY_NAME, DEFAULT_FAMILY  # the family registry: pure data, imports no torch

EX_CONFIG = 64  # no checkpoint where the settings point (the container entrypoint's exit code for it)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alm", description="Audio-language model serving.", allow_abbrev=False)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="N engines + the gateway on this host, supervised", allow_abbrev=False)
    serve.add_argument(
        "--model",
        dest="model_paths",
        action="append",
        help="checkpoint dir (default: the embedded tiny model); repeat it to serve several models behind one "
        "gateway, each under its directory's name",
    )
    serve.add_argument("--served-model-name", help="model name clients send (default: the directory's name)")
    serve.add_argument("--engines", type=int, default=1, help="number of vLLM engine replicas per model")
    serve.add_argument("--host", help="gateway bind address (ALM_GATEWAY_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="gateway port (ALM_GATEWAY_PORT or PORT, default 8080)")

    engine = commands.add_parser(
        "engine",
        allow_abbrev=False,
        help="exec vLLM's OpenAI server as the engine contract says; other flags go to vLLM",
    )
    engine.add_argument("--model", dest="model_path", help="checkpoint dir (ALM_MODEL_PATH)")
    engine.add_argument("--served-model-name", help="ALM_SERVED_MODEL_NAME (default: the directory's name)")
    engine.add_argument("--host", dest="engine_host", help="bind address (ALM_ENGINE_HOST, default 127.0.0.1)")
    engine.add_argument("--port", dest="engine_port", type=int, help="ALM_ENGINE_PORT or PORT (default 8000)")

    gateway = commands.add_parser("gateway", help="the OpenAI-compatible gateway (settings: ALM_*)", allow_abbrev=False)
    gateway.add_argument("--host", help="bind address (ALM_GATEWAY_HOST, default 127.0.0.1)")
    gateway.add_argument("--port", type=int, help="ALM_GATEWAY_PORT or PORT (default 8080)")

    tiny = commands.add_parser("make-tiny", help="write a seeded random-weight checkpoint of a model family")
    tiny.add_argument("--family", choices=list(BY_NAME), default=DEFAULT_FAMILY)
    tiny.add_argument("--out", type=Path, required=True, help="output directory")
    tiny.add_argument("--preset", choices=["tiny", "bench"], default="tiny", help="--family midashenglm only")
    tiny.add_argument("--seed", type=int, default=0)
    return parser


def _given(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "engine":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args.command == "engine":
            return exec_engine(_given(args, "model_path", "served_model_name", "engine_host", "engine_port"), extra)
        if args.command == "gateway":
            from alm.gateway import GatewayAddress, run_gateway

            return run_gateway(GatewayAddress(**_given(args, "host", "port")))
        if args.command == "serve":
            from alm.engine import EngineSettings
            from alm.gateway import GatewayAddress
            from alm.stack import run_stack

            address = GatewayAddress(**_given(args, "host", "port"))
            paths: list[str] = args.model_paths or []
            if len(paths) > 1 and args.served_model_name:
                parser.error("--served-model-name applies to one --model; several are served by directory name")
            name = _given(args, "served_model_name")
            models = [EngineSettings(**name, model_path=path) for path in paths] or [EngineSettings(**name)]
            return run_stack(models, address.port, args.engines, host=address.host)
    except (ValueError, ValidationError) as exc:
        print(f"alm {args.command}: {exc}", file=sys.stderr)
        return 2
    if args.family == "midashenglm":
        from model_plugins.midashenglm.tiny import make_tiny_checkpoint

        print(make_tiny_checkpoint(args.out, preset=args.preset, seed=args.seed))
        return 0
    if args.preset != "tiny":
        print("alm make-tiny: --preset applies to --family midashenglm only", file=sys.stderr)
        return 2
    from alm.tiny import make

    print(make(args.family, args.out, args.seed))
    return 0


def exec_engine(overrides: dict[str, Any], extra: list[str]) -> int:
    """Replace this process with the engine (the container's PID 1 stays vLLM, so signals reach it)."""
    from alm.engine import EngineSettings, engine_launch

    settings = EngineSettings(**overrides)
    if extra:
        settings = settings.model_copy(update={"engine_args": [*settings.engine_args, *extra]})
    model = settings.model_path
    hub_id = re.fullmatch(r"[\w-][\w.-]*/[\w.-]+", model) is not None and not Path(model).exists()
    if not hub_id and not (Path(model) / "config.json").is_file():
        print(
            f"alm engine: no checkpoint at ALM_MODEL_PATH={model!r} (config.json missing); mount the weights "
            "directory and point ALM_MODEL_PATH (or --model) at it",
            file=sys.stderr,
        )
        return EX_CONFIG
    launch = engine_launch(settings)
    print(f"alm engine: {shlex.join(launch.argv)}", file=sys.stderr, flush=True)
    os.execvpe(launch.argv[0], list(launch.argv), {**os.environ, **launch.env})
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
