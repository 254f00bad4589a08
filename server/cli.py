"""The `alm` command: `alm make-tiny --out DIR` and `alm serve`."""

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="alm", description="Audio-language model serving.")
    commands = parser.add_subparsers(dest="command", required=True)

    tiny = commands.add_parser("make-tiny", help="write a seeded random-weight MiDashengLM checkpoint")
    tiny.add_argument("--out", type=Path, required=True, help="output directory")
    tiny.add_argument("--preset", choices=["tiny", "bench"], default="tiny")
    tiny.add_argument("--seed", type=int, default=0)

    serve = commands.add_parser("serve", help="serve a model behind the OpenAI-compatible gateway")
    serve.add_argument("--model", type=Path, default=None, help="checkpoint dir (default: the embedded tiny model)")
    serve.add_argument("--port", type=int, default=8080, help="gateway port")
    serve.add_argument("--engines", type=int, default=1, help="number of vLLM engine replicas")

    args = parser.parse_args(argv)
    if args.command == "make-tiny":
        from model_plugins.midashenglm.tiny import make_tiny_checkpoint

        print(make_tiny_checkpoint(args.out, preset=args.preset, seed=args.seed))
        return 0
    from server.launcher import run_stack

    return run_stack(model=args.model, port=args.port, engines=args.engines)


if __name__ == "__main__":
    sys.exit(main())
