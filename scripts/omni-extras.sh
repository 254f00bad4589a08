#!/bin/sh
# torchvision for the Qwen Omni families (Qwen2.5-Omni, Qwen3-Omni) on CPU hosts, OUTSIDE the serving venv.
# vLLM's Omni model files and their Hugging Face processors import torchvision at module import. The only
# torchvision wheels PyPI has for Linux x86_64 are CUDA builds, whose compiled ops do not load beside the CPU torch,
# and whose `_meta_registrations.py` then dies at import (`operator torchvision::nms does not exist`): two
# `register_fake` calls there are not guarded by `_has_ops()` like the others. Installed into the venv it would also
# break `import transformers...modeling_qwen2` for every other model, so it goes into its own directory (given
# to Omni engines on PYTHONPATH by alm.families) with those two registrations made conditional. The pure-Python
# parts transformers needs (transforms, io helpers) then work; no torchvision op is ever called for audio.
# GPU images have a working torchvision and do not need this. Idempotent (~0.1 s when done).
#   VENV  the serving venv (default .venv)   DEST  target directory (default $VENV/omni-extras)
set -eu

root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${VENV:-$root/.venv}"
dest="${DEST:-$venv/omni-extras}"
py="$venv/bin/python"

[ -f "$dest/.alm-ready" ] && exit 0
# torchvision's minor version is torch's + 15 (torch 2.13 ↔ torchvision 0.28), the pair PyTorch releases together.
version="$("$py" -c 'import torch; m = int(torch.__version__.split(".")[1]); print(f"0.{m + 15}.*")')"
tmp="$dest.partial"
rm -rf "$tmp"
"$py" -m pip install --quiet --no-deps --target "$tmp" "torchvision==$version"

meta="$tmp/torchvision/_meta_registrations.py"
grep -q '^@torch.library.register_fake("torchvision::nms")' "$meta" || {
    echo "omni-extras: $meta has no unguarded nms registration to patch; check the torchvision release" >&2
    exit 1
}
"$py" - "$meta" <<'PY'
import sys
path = sys.argv[1]
text = open(path).read()
guard = '''

def _alm_fake_if_ops(name):  # alm-serve scripts/omni-extras.sh: only where the compiled ops loaded
    def wrapper(fn):
        return torch.library.register_fake(name)(fn) if torchvision.extension._has_ops() else fn

    return wrapper
'''
anchor = "import torchvision.extension  # noqa: F401\n"
text = text.replace(anchor, anchor + guard, 1)
for op in ("nms", "qnms"):
    text = text.replace(f'@torch.library.register_fake("torchvision::{op}")', f'@_alm_fake_if_ops("torchvision::{op}")')
open(path, "w").write(text)
PY
PYTHONPATH="$tmp" "$py" -c 'import torchvision.transforms.v2, transformers.models.qwen2.modeling_qwen2' || {
    echo "omni-extras: the patched torchvision does not import beside $("$py" -c 'import torch; print(torch.__version__)')" >&2
    exit 1
}
touch "$tmp/.alm-ready"
rm -rf "$dest"
mv "$tmp" "$dest"
echo "omni-extras: torchvision $(PYTHONPATH="$dest" "$py" -c 'import torchvision; print(torchvision.__version__)') in $dest"
