#!/bin/sh
# Container entrypoint: the first argument picks the role.
#   engine  [extra vLLM flags]   `alm engine`: execs vLLM's OpenAI server with the engine contract (alm/engine.py;
#                                settings ALM_MODEL_PATH, ALM_SERVED_MODEL_NAME, ALM_MAX_*, ALM_ENGINE_ARGS, ...)
#                                on $PORT; our plugin loads through the vllm.general_plugins entry point.
#   gateway                      `alm gateway`: the gateway app (the one `uvicorn server.api.app:app_from_env --factory`
#                                serves) under uvicorn with the server limits, on $PORT (settings: ALM_* env vars).
#   anything else                exec'd as given (e.g. `bash` for debugging).
# The image sets ALM_ENGINE_HOST / ALM_GATEWAY_HOST to 0.0.0.0 (Dockerfile).
set -eu

role="${1:-engine}"
if [ "$#" -gt 0 ]; then shift; fi

case "$role" in
engine | gateway)
    exec alm "$role" "$@"
    ;;
*)
    exec "$role" "$@"
    ;;
esac
