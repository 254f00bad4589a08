#!/bin/sh
# Container entrypoint: the first argument picks the role.
#   engine  [extra vllm serve args]  vLLM's OpenAI server on $PORT; our plugin is loaded through the
#                                    vllm.general_plugins entry point, so plain `vllm serve` runs our class.
#   gateway [extra uvicorn args]     the OpenAI-compatible audio gateway on $PORT (settings: ALM_* env vars).
#   anything else                    exec'd as given (e.g. `bash` for debugging).
set -eu

role="${1:-engine}"
if [ "$#" -gt 0 ]; then shift; fi

case "$role" in
engine)
    if [ ! -f "${ALM_MODEL_PATH}/config.json" ]; then
        echo "alm-entrypoint: no checkpoint at ALM_MODEL_PATH=${ALM_MODEL_PATH} (config.json missing)." >&2
        echo "alm-entrypoint: mount the weights directory at /models (compose: ALM_MODEL_DIR) and point ALM_MODEL_PATH at it." >&2
        exit 64
    fi
    # A gateway on the same host hands clips over as files in ALM_SHARED_AUDIO_DIR: let vLLM read them.
    if [ -n "${ALM_SHARED_AUDIO_DIR:-}" ]; then
        set -- --allowed-local-media-path "${ALM_SHARED_AUDIO_DIR}" "$@"
    fi
    # ALM_ENGINE_ARGS holds extra `vllm serve` flags from the env file and is word-split on purpose.
    # shellcheck disable=SC2086
    exec vllm serve "${ALM_MODEL_PATH}" \
        --served-model-name "${ALM_SERVED_MODEL_NAME}" \
        --host 0.0.0.0 --port "${PORT}" \
        ${ALM_ENGINE_ARGS:-} "$@"
    ;;
gateway)
    # --timeout-graceful-shutdown lets in-flight requests drain on SIGTERM (k8s / compose stop).
    exec python3 -m uvicorn server.app:app_from_env --factory \
        --host 0.0.0.0 --port "${PORT}" \
        --no-access-log --timeout-graceful-shutdown "${ALM_GRACEFUL_SHUTDOWN_S:-30}" "$@"
    ;;
*)
    exec "$role" "$@"
    ;;
esac
