#!/usr/bin/env bash
# Take a fresh Debian machine (Python >= 3.10, run as root) to a working megatiny environment.
# Idempotent: a second run checks what is there and changes nothing.
#   - Debian packages: openssh-server + pdsh (deepspeed --hostfile), libopenmpi-dev + openmpi-bin
#     (mpi4py), iproute2 (the two-host tests).
#   - A virtual environment in .venv with `pip install -e .[dev,eval,mpi]`.
#   - Without CUDA (no nvidia-smi) torch is pinned to the CPU build, torch==2.13.0.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
venv="${MEGATINY_VENV:-$repo/.venv}"
python="${PYTHON:-python3}"

log() { printf '[setup] %s\n' "$*"; }

debian_packages=(openssh-server openssh-client pdsh libopenmpi-dev openmpi-bin iproute2 procps)
missing=()
if command -v dpkg >/dev/null 2>&1; then
  for p in "${debian_packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
fi
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    log "WARNING: missing Debian packages (${missing[*]}) and not root: multi-host and mpirun tests will skip"
  fi
fi

if [ ! -x "$venv/bin/python" ]; then
  log "creating virtual environment $venv"
  "$python" -m venv "$venv"
fi
pip_install() {
  # pip's exit status is kept; only its notes about unreachable extra indexes are dropped.
  "$venv/bin/python" -m pip install -q "$@" 2> >(grep -v '^WARNING: Location' >&2)
}

# Re-install only when what we install from changes.
stamp="$venv/.megatiny-setup-stamp"
want="$(cat setup.py scripts/setup.sh | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  log "environment up to date ($venv)"
  exit 0
fi

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
  log "CUDA machine: installing torch from the default index"
  pip_install torch
else
  log "no CUDA: pinning the CPU build torch==2.13.0"
  pip_install "torch==2.13.0"
fi
log "installing megatiny with extras dev,eval,mpi"
pip_install -e ".[dev,eval,mpi]"
echo "$want" > "$stamp"
log "done: activate with 'source $venv/bin/activate'"
