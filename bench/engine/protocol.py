"""Child side of workers.py: JSON commands on stdin, JSON results on a dedicated pipe.

stdout/stderr are left to the libraries' logs (vLLM prints a lot); results never mix with them.
"""

import json
import os
import sys
import traceback
from collections.abc import Callable


def serve(result_fd: int, ready: dict, handlers: dict[str, Callable[..., dict]]) -> None:
    """Announce readiness, then answer one JSON line per command until {"cmd": "quit"} or EOF."""
    out = os.fdopen(result_fd, "w", buffering=1)
    out.write(json.dumps({"ready": True, **ready}) + "\n")
    for line in sys.stdin:
        command = json.loads(line)
        name = command.pop("cmd")
        if name == "quit":
            break
        try:
            result = handlers[name](**command)
        except Exception as exc:  # reported to the parent, which prints it; the worker lives on
            traceback.print_exc()
            result = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        out.write(json.dumps(result) + "\n")
