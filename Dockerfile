# syntax=docker/dockerfile:1
#
# One GPU image, two roles chosen by the command (see deploy/docker/entrypoint.sh):
#   docker run ... alm-serve engine  [extra vllm serve args]   -> vLLM OpenAI server + our MiDashengLM plugin
#   docker run ... alm-serve gateway                           -> the OpenAI-compatible audio gateway
# Both roles listen on $PORT (8000) inside their own container, so one HEALTHCHECK serves both.
# Model weights are never baked in: mount them at /models (compose: ALM_MODEL_DIR, k8s: a volume).
#
# The base is the official vLLM OpenAI-server image at the vLLM version our plugin is written against
# (pyproject's `gpu` extra pins vllm==0.32.0). It already carries CUDA, torch and vLLM, so we install our
# package WITHOUT an engine extra: pip then only adds the few gateway dependencies the base lacks.
FROM vllm/vllm-openai:v0.32.0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PORT=8000 \
    HOME=/home/alm \
    HF_HOME=/home/alm/.cache/huggingface \
    VLLM_CACHE_ROOT=/home/alm/.cache/vllm \
    ALM_MODEL_PATH=/models/midashenglm-7b \
    ALM_SERVED_MODEL_NAME=midashenglm-7b

# Non-root runtime user with a writable home for the HF / vLLM / torch.compile caches.
RUN groupadd --gid 10001 alm \
    && useradd --uid 10001 --gid alm --create-home --home-dir /home/alm --shell /usr/sbin/nologin alm \
    && mkdir -p /models /home/alm/.cache \
    && chown -R alm:alm /home/alm

WORKDIR /opt/alm-serve

COPY pyproject.toml ./
COPY model_plugins ./model_plugins
COPY server ./server
# Into the base image's own Python, beside vLLM (PIP_BREAK_SYSTEM_PACKAGES: that Python may be marked
# externally managed). The import check fails the build, not the first container start, on a broken install.
RUN PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --no-cache-dir . \
    && python3 -c "import model_plugins, server"

COPY --chmod=0755 deploy/docker/entrypoint.sh /usr/local/bin/alm-entrypoint
COPY --chmod=0755 deploy/docker/healthcheck.py /usr/local/bin/alm-healthcheck

USER 10001:10001
EXPOSE 8000

# An engine loading 7B weights and compiling takes minutes: the start period covers that
# (orchestrators with their own probes — compose, k8s — override these numbers per role).
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python3", "/usr/local/bin/alm-healthcheck"]

# Replaces the base image's `vllm serve` entrypoint: ours picks the role.
ENTRYPOINT ["/usr/local/bin/alm-entrypoint"]
CMD ["engine"]
